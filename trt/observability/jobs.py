"""Generation jobs made visible: ids on every line of a job, metrics for jobs and KIE.

The generation service is the product's; this module observes it from the
outside: it wraps the two things the service is given (its job store and its
KIE client, each a Protocol of flows.generation.ports) and is the service's
StepHooks around its two entry points (a step, a KIE callback):

- every job read or moved binds the job's ids (job_id, user_id, chat_id,
  job_state) to the log context, so the lines of a step, of the KIE call
  inside it, and of a KIE callback all say which job and which user;
- each step and each callback runs in a scope of its own, so the poller,
  which steps many jobs in one task, never lends one job's ids to the next;
- every move is logged once and counted (`trt_job_transitions_total`), every
  KIE call is timed and its failures counted by class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

from flows.generation.ports import Jobs, Kie
from kie.task import TaskInfo
from storage.job_states import JobState
from storage.jobs import JobRecord
from trt.observability.context import bind, scope
from trt.observability.metrics import JOB_TRANSITIONS, KIE_ERRORS, KIE_SECONDS

log = logging.getLogger("trt.jobs")

_T = TypeVar("_T")


def _bind(job: JobRecord) -> None:
    bind(job_id=job.id, user_id=job.user_id, chat_id=job.chat_id, job_state=job.state)


class CorrelatedJobs:
    """The service's job store, binding each job's ids as it reads or moves one."""

    def __init__(self, inner: Jobs) -> None:
        self.inner = inner

    async def create(self, **values: Any) -> tuple[JobRecord, bool]:
        job, created = await self.inner.create(**values)
        _bind(job)
        if created:
            JOB_TRANSITIONS.labels(JobState.CREATED.value).inc()
            log.info("job created", extra={"model": job.model_id, "price": job.price})
        return job, created

    async def get(self, job_id: str) -> JobRecord | None:
        job = await self.inner.get(job_id)
        if job is not None:
            _bind(job)
        return job

    async def move(
        self,
        job_id: str,
        expected: Iterable[JobState],
        to: JobState,
        *,
        detail: str | None = None,
        due_by: datetime | None = None,
        **changes: Any,
    ) -> JobRecord | None:
        moved = await self.inner.move(job_id, expected, to, detail=detail, due_by=due_by, **changes)
        if moved is not None:
            _bind(moved)
            JOB_TRANSITIONS.labels(to.value).inc()
            log.info("job moved to %s", to.value, extra={"detail": detail} if detail else None)
        return moved

    async def update(self, job_id: str, **changes: Any) -> None:
        await self.inner.update(job_id, **changes)

    async def due(self, states: Iterable[str], limit: int = 100) -> list[JobRecord]:
        return await self.inner.due(states, limit)

    async def recent(self, user_id: int, limit: int = 10) -> list[JobRecord]:
        return await self.inner.recent(user_id, limit)

    async def count_free_since(self, user_id: int, since: datetime) -> int:
        return await self.inner.count_free_since(user_id, since)


class TimedKie:
    """The service's KIE client: same calls, each one timed and its failures counted."""

    def __init__(self, inner: Kie) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"TimedKie({self.inner!r})"

    async def close(self) -> None:
        await self.inner.close()

    async def create_task(self, model: str, input: dict[str, Any], callback_url: str | None) -> str:
        task_id = await self._timed(
            "create_task", self.inner.create_task(model, input, callback_url)
        )
        log.info("KIE task created", extra={"task_id": task_id, "kie_model": model})
        return task_id

    async def record_info(self, task_id: str) -> TaskInfo:
        return await self._timed("record_info", self.inner.record_info(task_id))

    async def credits(self) -> float:
        return await self._timed("credits", self.inner.credits())

    @staticmethod
    async def _timed(operation: str, call: Awaitable[_T]) -> _T:
        started = time.perf_counter()
        try:
            return await call
        except Exception as exc:
            KIE_ERRORS.labels(operation, type(exc).__name__).inc()
            log.info("KIE %s failed: %s", operation, type(exc).__name__)
            raise
        finally:
            KIE_SECONDS.labels(operation).observe(time.perf_counter() - started)


class JobScopes:
    """The service's StepHooks: each step and callback in a correlation scope of its own."""

    def step(self, job_id: str) -> AbstractContextManager[object]:
        return scope(job_id=job_id)

    def callback(self, job_id: str) -> AbstractContextManager[object]:
        return scope(job_id=job_id)

    def callback_handled(self, job_id: str, task_id: str, accepted: bool) -> None:
        log.info(
            "KIE callback %s", "accepted" if accepted else "refused", extra={"task_id": task_id}
        )
