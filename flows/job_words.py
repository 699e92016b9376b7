"""A job's state in the user's words: the one mapping the history screen and the admin
replies share, so that no reply shows the lifecycle's internal names (`charged`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.job_states import JobState

if TYPE_CHECKING:
    from storage.jobs import JobRecord

_STATUS = {
    JobState.CHARGED: "job_status_done",
    JobState.LOST: "job_status_done",
    JobState.RELEASED: "job_status_failed",
    JobState.REJECTED: "job_status_rejected",
}


RUNNING = "job_status_running"
# Every key status_key can give.
STATUS_TEXTS = tuple(sorted({*_STATUS.values(), RUNNING}))


def job_title(job: JobRecord) -> str:
    """What the user ordered, as the menus named it (the model's id if it had no title)."""
    return str(job.request.get("title", job.model_id))


def status_key(state: JobState) -> str:
    """The flows.yaml text key for a job in `state`; every unfinished state is running."""
    return _STATUS.get(state, RUNNING)
