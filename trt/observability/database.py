"""Metrics whose truth is in the database, read when Prometheus scrapes.

Jobs waiting in each state, money on hold, payments and the connection pool
are facts about shared state, not about this process: every replica reports
the same numbers, read at scrape time (a few indexed aggregates, at most once
per `min_interval_s`), so they stay right across restarts and replicas. The pool
gauges are this process's own and cost no I/O. If the database cannot be read,
`trt_db_metrics_up` drops to 0 and the last values are kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import PoolUsage, pool_usage
from storage.job_states import JOB_FINAL_STATES
from storage.models import JOB_STATES, Account, Hold, Job, Payment, Transfer, table_of
from trt.observability.metrics import REGISTRY

log = logging.getLogger("trt.metrics")

UNFINISHED = tuple(s for s in JOB_STATES if s not in JOB_FINAL_STATES)
# A hold still pending this long after its timeout means the sweeper is not running.
OVERDUE_AFTER = timedelta(minutes=1)
PAYMENTS_SOURCE = "topups"  # the system account money paid by users enters through

_jobs = table_of(Job)
_holds = table_of(Hold)
_transfers = table_of(Transfer)
_accounts = table_of(Account)
_payments = table_of(Payment)


@dataclass(slots=True)
class DatabaseFacts:
    jobs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNFINISHED, 0))
    holds_pending: int = 0
    holds_pending_kopecks: int = 0
    holds_overdue: int = 0
    holds_oldest_age_s: float = 0.0
    payments: int = 0
    payments_kopecks: int = 0
    orphan_payments: int = 0


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def read_facts(db: AsyncEngine, now: datetime | None = None) -> DatabaseFacts:
    now = now or datetime.now(UTC)
    facts = DatabaseFacts()
    pending = _holds.c.state == "pending"
    async with db.connect() as conn:
        rows = await conn.execute(
            select(_jobs.c.state, func.count())
            .where(_jobs.c.state.in_(UNFINISHED))
            .group_by(_jobs.c.state)
        )
        facts.jobs.update({state: int(count) for state, count in rows})
        count, total = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(_holds.c.amount), 0)).where(pending)
            )
        ).one()
        facts.holds_pending, facts.holds_pending_kopecks = int(count), int(total)
        facts.holds_overdue = int(
            await conn.scalar(
                select(func.count()).where(pending, _holds.c.timeout_at < now - OVERDUE_AFTER)
            )
            or 0
        )
        oldest = await conn.scalar(
            select(func.min(_transfers.c.created_at))
            .select_from(_holds.join(_transfers, _transfers.c.id == _holds.c.id))
            .where(pending)
        )
        facts.holds_oldest_age_s = (now - _utc(oldest)).total_seconds() if oldest else 0.0
        paid, paid_total = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(_transfers.c.amount), 0))
                .select_from(
                    _transfers.join(_accounts, _accounts.c.id == _transfers.c.debit_account_id)
                )
                .where(_transfers.c.kind == "credit", _accounts.c.code == PAYMENTS_SOURCE)
            )
        ).one()
        facts.payments, facts.payments_kopecks = int(paid), int(paid_total)
        facts.orphan_payments = int(
            await conn.scalar(
                select(func.count()).where(
                    _payments.c.order_id.is_(None), _payments.c.refunded_at.is_(None)
                )
            )
            or 0
        )
    return facts


class DatabaseCollector(Collector):
    """Registered once per process; each /metrics request refreshes it for its engine."""

    def __init__(self) -> None:
        self.facts = DatabaseFacts()
        self.pool: PoolUsage | None = None
        self.up = False
        self._read_at = -1e9
        self._read_from: int | None = None

    async def refresh(
        self, db: AsyncEngine, *, min_interval_s: float = 5.0, timeout_s: float = 3.0
    ) -> None:
        self.pool = pool_usage(db)
        fresh = time.monotonic() - self._read_at < min_interval_s
        if fresh and self._read_from == id(db):
            return
        self._read_at, self._read_from = time.monotonic(), id(db)
        try:
            self.facts = await asyncio.wait_for(read_facts(db), timeout_s)
            self.up = True
        except Exception as exc:
            self.up = False
            log.warning("database metrics not read: %s", type(exc).__name__)

    def collect(self) -> Iterator[Metric]:
        facts, pool = self.facts, self.pool or PoolUsage(0, 0, 0, 0, 0.0, 0)
        yield _gauge("trt_db_metrics_up", "1 if the last read of database metrics worked.", self.up)
        jobs = GaugeMetricFamily(
            "trt_jobs", "Unfinished generation jobs by state.", labels=["state"]
        )
        for state, count in facts.jobs.items():
            jobs.add_metric([state], count)
        yield jobs
        yield _gauge("trt_holds_pending", "Ledger holds still pending.", facts.holds_pending)
        yield _gauge(
            "trt_holds_pending_kopecks", "Money held by pending holds.", facts.holds_pending_kopecks
        )
        yield _gauge(
            "trt_holds_overdue",
            "Pending holds past their timeout (the sweeper should have expired them).",
            facts.holds_overdue,
        )
        yield _gauge(
            "trt_holds_pending_oldest_age_seconds",
            "Age of the oldest pending hold.",
            facts.holds_oldest_age_s,
        )
        yield CounterMetricFamily(
            "trt_payments", "Payments credited to users (top-ups).", value=facts.payments
        )
        yield CounterMetricFamily(
            "trt_payments_kopecks",
            "Money credited to users by payments.",
            value=facts.payments_kopecks,
        )
        yield _gauge(
            "trt_orphan_payments",
            "Payments for orders the bot does not know, credited nothing and not yet "
            "refunded: the user paid and got nothing; an admin must /refund them.",
            facts.orphan_payments,
        )
        yield _gauge("trt_db_pool_size", "Connections the pool keeps open.", pool.size)
        yield _gauge("trt_db_pool_checked_out", "Connections in use now.", pool.checked_out)
        yield _gauge(
            "trt_db_pool_overflow", "Connections open beyond the pool size.", pool.overflow
        )
        yield CounterMetricFamily(
            "trt_db_pool_waits",
            "Checkouts that found the pool exhausted and had to wait.",
            value=pool.waits,
        )
        yield CounterMetricFamily(
            "trt_db_pool_wait_seconds",
            "Time checkouts spent waiting for a connection.",
            value=pool.wait_seconds,
        )
        yield CounterMetricFamily(
            "trt_db_pool_timeouts",
            "Checkouts that gave up waiting for a connection.",
            value=pool.timeouts,
        )


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))


DATABASE = DatabaseCollector()
REGISTRY.register(DATABASE)
