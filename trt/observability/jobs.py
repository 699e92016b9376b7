"""Generation jobs made visible: ids on every line of a job, metrics for jobs and KIE.

The generation service is the product's; this module observes it from the
outside, through the two things it is given (its job store and its KIE
client) and its two entry points (a step, a KIE callback):

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
from collections.abc import Awaitable
from typing import Any, TypeVar

from flows.generation.service import GenerationService
from kie.client import KieClient
from kie.task import TaskInfo
from storage.jobs import JobRecord, JobStore
from trt.observability.context import bind, scope
from trt.observability.metrics import JOB_TRANSITIONS, KIE_ERRORS, KIE_SECONDS

log = logging.getLogger("trt.jobs")

_T = TypeVar("_T")


def _bind(job: JobRecord) -> None:
    bind(job_id=job.id, user_id=job.user_id, chat_id=job.chat_id, job_state=job.state)


class CorrelatedJobStore(JobStore):
    """The service's job store, on the same engine and clock, binding ids as it goes."""

    def __init__(self, inner: JobStore) -> None:
        super().__init__(inner.engine, inner.clock)

    async def create(self, **values: Any) -> tuple[JobRecord, bool]:
        job, created = await super().create(**values)
        _bind(job)
        if created:
            JOB_TRANSITIONS.labels("created").inc()
            log.info("job created", extra={"model": job.model_id, "price": job.price})
        return job, created

    async def get(self, job_id: str) -> JobRecord | None:
        job = await super().get(job_id)
        if job is not None:
            _bind(job)
        return job

    async def move(
        self,
        job_id: str,
        expected: Any,
        to: str,
        *,
        detail: str | None = None,
        **changes: Any,
    ) -> JobRecord | None:
        moved = await super().move(job_id, expected, to, detail=detail, **changes)
        if moved is not None:
            _bind(moved)
            JOB_TRANSITIONS.labels(to).inc()
            log.info("job moved to %s", to, extra={"detail": detail} if detail else None)
        return moved


class TimedKie(KieClient):
    """Stands in for the service's KIE client: same calls, each one timed and counted.

    A subclass only so that it type-checks where a KieClient is expected; it holds
    no session of its own and hands every call to the real client.
    """

    def __init__(self, inner: KieClient) -> None:  # no super().__init__: nothing of its own
        self._inner = inner

    def __repr__(self) -> str:
        return f"TimedKie({self._inner!r})"

    async def close(self) -> None:
        await self._inner.close()

    async def create_task(self, model: str, input: dict[str, Any], callback_url: str | None) -> str:
        task_id = await self._timed(
            "create_task", self._inner.create_task(model, input, callback_url)
        )
        log.info("KIE task created", extra={"task_id": task_id, "kie_model": model})
        return task_id

    async def record_info(self, task_id: str) -> TaskInfo:
        return await self._timed("record_info", self._inner.record_info(task_id))

    async def credits(self) -> float:
        return await self._timed("credits", self._inner.credits())

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


class ObservedGeneration(GenerationService):
    """The generation service with its store and KIE client observed, and each step and
    callback in a correlation scope of its own."""

    def __init__(self, *, jobs: JobStore, kie: KieClient, **rest: Any) -> None:
        super().__init__(jobs=CorrelatedJobStore(jobs), kie=TimedKie(kie), **rest)

    async def advance(self, job_id: str) -> None:
        with scope(job_id=job_id):
            await super().advance(job_id)

    async def on_callback(self, job_id: str, secret: str, info: TaskInfo) -> bool:
        with scope(job_id=job_id):
            accepted = await super().on_callback(job_id, secret, info)
            log.info(
                "KIE callback %s",
                "accepted" if accepted else "refused",
                extra={"task_id": info.task_id},
            )
            return accepted
