"""Jobs: the generation's own record, moved between states by compare-and-set.

Every state change is `UPDATE ... WHERE id = :id AND state IN (:expected)`, so
when a callback, the poller and recovery race on one job, exactly one of them
moves it and the others see None and stand back. Each move also appends a
job_events row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import one_statement
from storage.db import insert_if_absent, write_transaction
from storage.job_states import JOB_FINAL_STATES, JobState
from storage.models import Job, JobEvent, table_of

_jobs = table_of(Job)
_events = table_of(JobEvent)
_DATETIMES = ("next_check_at", "deadline_at", "created_at", "updated_at")


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    key: str
    user_id: int
    chat_id: int
    locale: str
    model_id: str
    kie_model: str
    kind: str
    request: dict[str, Any]
    price: int
    hold_id: str | None
    task_id: str | None
    callback_secret: str
    state: JobState
    result_urls: list[str]
    error: str | None
    progress_message_id: int | None
    polls: int
    next_check_at: datetime
    deadline_at: datetime
    created_at: datetime
    updated_at: datetime

    @property
    def final(self) -> bool:
        return self.state in JOB_FINAL_STATES


_COLUMNS = [f.name for f in fields(JobRecord)]


def _record(row: Any) -> JobRecord:
    data = {name: getattr(row, name) for name in _COLUMNS}
    for name in _DATETIMES:
        moment = data[name]
        data[name] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    data["result_urls"] = list(data["result_urls"] or [])
    data["state"] = JobState(data["state"])
    return JobRecord(**data)


class JobStore:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    async def create(self, **values: Any) -> tuple[JobRecord, bool]:
        """The job for `values["key"]`: made now (True) or found from an earlier tap (False)."""
        now = self.clock()
        row = {
            "state": JobState.CREATED.value,
            "result_urls": [],
            "polls": 0,
            "next_check_at": now,
            "created_at": now,
            "updated_at": now,
            **values,
        }
        async with write_transaction(self.engine) as conn:
            made = await conn.execute(insert_if_absent(conn.dialect.name, _jobs, ["key"], row))
            if made.rowcount == 1:
                await conn.execute(
                    insert(_events).values(job_id=row["id"], state=JobState.CREATED.value, at=now)
                )
            found = (await conn.execute(select(_jobs).where(_jobs.c.key == row["key"]))).one()
        return _record(found), made.rowcount == 1

    async def get(self, job_id: str) -> JobRecord | None:
        row = await one_statement.read(self.engine, select(_jobs).where(_jobs.c.id == job_id))
        return _record(row) if row is not None else None

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
        """Moves the job to `to` if it is in one of `expected` (and, with `due_by`, its
        `next_check_at` has come by then: a lease that expired); None when another won."""
        now, state = self.clock(), JobState(to).value
        condition = [_jobs.c.id == job_id, _jobs.c.state.in_([JobState(s).value for s in expected])]
        if due_by is not None:
            condition.append(_jobs.c.next_check_at <= due_by)
        async with write_transaction(self.engine) as conn:
            moved = await conn.execute(
                update(_jobs).where(*condition).values(state=state, updated_at=now, **changes)
            )
            if moved.rowcount != 1:
                return None
            await conn.execute(
                insert(_events).values(
                    job_id=job_id,
                    state=state,
                    at=now,
                    detail=(detail or None) and detail[:300],
                )
            )
            row = (await conn.execute(select(_jobs).where(_jobs.c.id == job_id))).one()
        return _record(row)

    async def update(self, job_id: str, **changes: Any) -> None:
        """Bookkeeping that is not a state change (poll count, next check, progress message)."""
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                update(_jobs).where(_jobs.c.id == job_id).values(updated_at=self.clock(), **changes)
            )

    async def due(self, states: Iterable[str], limit: int = 100) -> list[JobRecord]:
        """Jobs in `states` whose next check time has come, oldest first."""
        rows = await one_statement.read_all(
            self.engine,
            select(_jobs)
            .where(_jobs.c.state.in_(tuple(states)), _jobs.c.next_check_at <= self.clock())
            .order_by(_jobs.c.next_check_at)
            .limit(limit),
        )
        return [_record(r) for r in rows]

    async def recent(self, user_id: int, limit: int = 10) -> list[JobRecord]:
        rows = await one_statement.read_all(
            self.engine,
            select(_jobs)
            .where(_jobs.c.user_id == user_id, _jobs.c.state != "rejected")
            .order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc())
            .limit(limit),
        )
        return [_record(r) for r in rows]

    async def count_free_since(self, user_id: int, since: datetime) -> int:
        """Free generations started since `since` (rejected ones do not count)."""
        row = await one_statement.read(
            self.engine,
            select(func.count())
            .select_from(_jobs)
            .where(
                _jobs.c.user_id == user_id,
                _jobs.c.price == 0,
                _jobs.c.created_at >= since,
                _jobs.c.state != "rejected",
            ),
        )
        return int(row[0] or 0) if row is not None else 0

    async def events(self, job_id: str) -> list[str]:
        rows = await one_statement.read_all(
            self.engine,
            select(_events.c.state).where(_events.c.job_id == job_id).order_by(_events.c.id),
        )
        return [str(r.state) for r in rows]
