"""A generation job's states: one enum that the table's CHECK, the lifecycle
(flows.generation.lifecycle) and every comparison in Python name, so mypy
checks each use. Free of the database libraries: the editors' flows check
reads it.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    CREATED = "created"  # the row exists; no money moved yet
    HELD = "held"  # the price is held (or the model is free); KIE not asked yet
    SUBMITTING = "submitting"  # createTask was sent: it may have reached KIE even if unheard
    SUBMITTED = "submitted"  # KIE gave the task id
    RUNNING = "running"  # KIE reports progress
    SUCCEEDED = "succeeded"  # recordInfo confirmed the result
    DELIVERING = "delivering"  # one sender claimed delivery until next_check_at (its lease)
    DELIVERED = "delivered"  # the result reached the user; the hold is being posted
    CHARGED = "charged"  # done: delivered and paid
    FAILED = "failed"  # KIE failed or we gave up; the hold is being released
    RELEASED = "released"  # done: failed and nothing charged
    REJECTED = "rejected"  # done: never started (not enough balance, free limit)
    LOST = "lost"  # done: delivered but the hold had expired, so nothing was charged (S8)


JOB_FINAL_STATES = (JobState.CHARGED, JobState.RELEASED, JobState.REJECTED, JobState.LOST)
