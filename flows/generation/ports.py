"""What the generation service needs from the outside, as Protocols.

The service is given its job store and its KIE client, never a particular
class: so what observes them (trt.observability.jobs) wraps them, and what
watches a step or a callback does so through `StepHooks`, without either
subclassing the service or its parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, Protocol

from kie.task import TaskInfo
from storage.job_states import JobState
from storage.jobs import JobRecord


class Jobs(Protocol):
    """The job rows (storage.jobs.JobStore)."""

    async def create(self, **values: Any) -> tuple[JobRecord, bool]: ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def move(
        self,
        job_id: str,
        expected: Iterable[JobState],
        to: JobState,
        *,
        detail: str | None = None,
        due_by: datetime | None = None,
        **changes: Any,
    ) -> JobRecord | None: ...

    async def update(self, job_id: str, **changes: Any) -> None: ...

    async def due(self, states: Iterable[str], limit: int = 100) -> list[JobRecord]: ...

    async def recent(self, user_id: int, limit: int = 10) -> list[JobRecord]: ...

    async def count_free_since(self, user_id: int, since: datetime) -> int: ...


class Kie(Protocol):
    """KIE's jobs API (kie.client.KieClient)."""

    async def create_task(
        self, model: str, input: dict[str, Any], callback_url: str | None
    ) -> str: ...

    async def record_info(self, task_id: str) -> TaskInfo: ...

    async def credits(self) -> float: ...

    async def close(self) -> None: ...


class StepHooks(Protocol):
    """Called around a job's step and on a KIE callback."""

    def step(self, job_id: str) -> AbstractContextManager[object]:
        """Holds for the whole of one step of `job_id` (the poller steps many in a row)."""
        ...

    def callback(self, job_id: str) -> AbstractContextManager[object]:
        """Holds while a KIE callback for `job_id` is handled."""
        ...

    def callback_handled(self, job_id: str, task_id: str, accepted: bool) -> None:
        """After the callback: whether it was for this job."""
        ...


class NoHooks:
    """StepHooks that do nothing."""

    def step(self, job_id: str) -> AbstractContextManager[object]:
        return nullcontext()

    def callback(self, job_id: str) -> AbstractContextManager[object]:
        return nullcontext()

    def callback_handled(self, job_id: str, task_id: str, accepted: bool) -> None:
        return None
