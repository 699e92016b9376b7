"""The fault campaign's fast subset (issue 11): a few representative effect points ×
faults through a real `trt serve` process, on SQLite and on PostgreSQL.

Each case is one run of `tests.faults` (`python -m tests.faults` runs them all, `make
faults` on both databases): the fault strikes at the point, Telegram redelivers what was
not acknowledged, KIE calls back or is polled, and then the money invariants (I1-I5,
I7, I8), one job per order with one charge and one delivery, every callback query
answered once, every update acknowledged are read back from the database and the fakes.
A case passes only when the fault did strike there and every check held.

Cases the campaign found failing carry their finding: they must still fail for exactly
that reason (reported as xfail), document a defect for the engineers who own that code,
and fail outright once it is fixed, so that they move up to the passing cases.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.engine import URL

from tests.faults.campaign import Report, describe, pick, run_one, wind_down
from tests.faults.database import Database, create_postgres, create_sqlite, drop_postgres
from tests.faults.world import World, open_world

# One `trt serve` per database: starting it costs seconds. One worker runs them all
# (tests/conftest.py: ONE_WORKER_GROUPS), and the worlds live for the session, so that
# a worker running other tests in between does not start them again.
pytestmark = pytest.mark.asyncio(loop_scope="session")
_numbers = itertools.count(1)


CASES = [
    # S5: the process dies after delivery, before the charge: charged exactly once.
    ("gen.result_screen", "kill", 0, None),
    # S11: createTask's answer is lost: no second task, the callback finishes the job.
    ("gen.create", "kie_cut", 0, None),
    # The database drops every connection as KIE calls back: the poller catches up.
    ("gen.callback", "db_drop", 0, None),
    # KIE fails the task; the failure screen cannot be sent: the hold is still released.
    ("fail.release_screen", "tg_cut", 0, None),
    # PostgreSQL only: the process dies while the charge waits to commit.
    ("gen.charge", "kill", 0, None),
    # /credit whose reply never reaches Telegram: redelivered, applied and audited once.
    ("admin.reply", "tg_cut", 0, None),
    # A path of `trt flows paths` (a promo code typed) whose last screen meets a crash.
    ("nav.screen", "kill", 24, None),
    # Findings of earlier campaigns, fixed since: a result Telegram failed to take (5xx)
    # is sent again, never sold unseen; a lost receipt is sent on the redelivery; a
    # refund whose answer was lost is not voided while Telegram may have refunded.
    ("gen.delivery", "tg_5xx", 0, None),
    ("pay.receipt", "tg_5xx", 0, None),
    ("refund.call", "tg_timeout", 0, None),
    # A tap answered just before the process died is answered again by its redelivery,
    # which Telegram refuses unseen ("query is too old"): a duplicate, not a failure.
    ("nav.answer", "kill", 12, None),
    # The answer taken, then the screen's edit failed: the redelivery does not answer again.
    ("nav.screen", "tg_5xx", 3, None),
]


def _cases(db: str) -> list[object]:
    """The cases whose fault applies on `db` (a write gate is PostgreSQL's)."""
    return [
        pytest.param(*case, id=f"{case[0]}-{case[1]}")
        for case in CASES
        if pick(db, case[0], case[1], case[2]) is not None
    ]


@asynccontextmanager
async def _world(workdir: Path, admin: URL | None) -> AsyncIterator[World]:
    """A fresh migrated database, the fakes and `trt serve` on it, until the session ends;
    then the service winds down and the checks of all its runs must hold."""
    url = await create_postgres(admin) if admin is not None else await create_sqlite(workdir)
    db = Database(url)
    try:
        with (workdir / "trt-serve.log").open("w", encoding="utf-8") as log:
            async with open_world(db, workdir, log) as opened:
                yield opened
                report = Report()
                await wind_down(opened, report)
                assert not report.failed, describe(report.outcomes[-1])
    finally:
        await db.close()
        if admin is not None:
            await drop_postgres(admin, url)


# One world per database (its own fixture: a world parametrized along with the cases
# would be set up again for every case).
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with _world(tmp_path_factory.mktemp("faults-sqlite"), None) as world:
        yield world


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgresql_world(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: URL
) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("faults-postgresql")
    async with _world(workdir, postgres_admin_url) as world:
        yield world


async def _strikes(world: World, point: str, fault: str, path: int, finding: str | None) -> None:
    """The fault strikes at the point and every check holds afterwards. A case with a
    `finding` is a known defect: it must still fail for exactly that reason (xfail), and
    fails outright once fixed, so that it moves up to the passing cases."""
    planned = pick(world.db.kind, point, fault, path)
    assert planned is not None
    outcome = await run_one(world, planned, next(_numbers), crowd=0)
    assert outcome.hit, describe(outcome)
    failures = [f.reason for f in outcome.findings if f.kind == "fail"]
    if finding is None:
        assert failures == [], describe(outcome)
        return
    assert [f for f in failures if finding not in f] == [], describe(outcome)
    assert failures, f"fixed? {finding!r} no longer happens: make it a passing case"
    pytest.xfail(f"campaign finding: {failures[0]}")


@pytest.mark.parametrize(("point", "fault", "path", "finding"), _cases("sqlite"))
async def test_fault_on_sqlite(
    sqlite_world: World, point: str, fault: str, path: int, finding: str | None
) -> None:
    await _strikes(sqlite_world, point, fault, path, finding)


@pytest.mark.parametrize(("point", "fault", "path", "finding"), _cases("postgresql"))
async def test_fault_on_postgresql(
    postgresql_world: World, point: str, fault: str, path: int, finding: str | None
) -> None:
    await _strikes(postgresql_world, point, fault, path, finding)
