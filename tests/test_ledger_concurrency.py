"""The ledger under real concurrency (MONEY.md S1, S3, S7, S8), on SQLite and PostgreSQL.

Races between OS processes run tests/ledger_worker.py: each worker builds its own
engine, waits at a barrier until every worker is warm, then fires its share of
calls at once. Races inside this process use asyncio.gather over several Ledger
instances (each with its own clock), so every call runs on its own connection.
After each race the invariants are checked straight from SQL (I1-I4, I7).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.ledger import (
    HoldExpired,
    HoldNotPending,
    Ledger,
    LedgerError,
    TransferRecord,
)
from storage.users import ensure_user
from tests import zygote
from tests.ledger_support import START, Clock, check_invariants

ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT_S = 120.0
MINUTE = timedelta(minutes=1)

Job = dict[str, Any]
Outcome = dict[str, Any]


# ------------------------------------------------------------------ helpers


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(db_engine: AsyncEngine, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = Ledger(db_engine, clock=clock)
    yield ledger
    await check_invariants(db_engine)


@pytest.fixture
def deadlock_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """storage.retry logs every retry; the tests count the ones for a deadlock (40P01)."""
    caplog.set_level(logging.DEBUG, logger="storage.retry")
    return caplog


def deadlocks(caplog: pytest.LogCaptureFixture) -> int:
    return sum("deadlock detected" in r.getMessage() for r in caplog.records)


async def funded(ledger: Ledger, user_id: int, amount: int) -> int:
    account = await ensure_user(ledger.engine, user_id)
    if amount:
        await ledger.credit(f"top-{user_id}", account, amount, source="topups", reason="topup")
    return account


async def system_account(engine: AsyncEngine, code: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(text("SELECT id FROM accounts WHERE code = :c"), {"c": code})
    assert found is not None
    return int(found)


async def hold_rows(engine: AsyncEngine, account: int) -> dict[str, tuple[str, int | None, str]]:
    """id -> (state, posted_amount, resolution_id) for the account's holds."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, state, posted_amount, resolution_id FROM holds "
                    "WHERE account_id = :a"
                ),
                {"a": account},
            )
        ).all()
    return {r.id: (r.state, r.posted_amount, r.resolution_id) for r in rows}


async def resolutions_of(engine: AsyncEngine, hold_id: str) -> list[tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, kind, amount FROM transfers WHERE pending_id = :h"),
                {"h": hold_id},
            )
        ).all()
    return [(r.id, r.kind, r.amount) for r in rows]


def hold_call(hold_id: str, account: int, amount: int, expires_in: float = 600) -> Job:
    return {
        "op": "hold",
        "id": hold_id,
        "account": account,
        "amount": amount,
        "expires_in": expires_in,
    }


async def race(url: str, *jobs: Job) -> list[dict[str, Any]]:
    """Runs one worker process per job against `url`, all released at once; their reports.

    Workers are forked from a warm interpreter (tests/zygote.py): processes of their own,
    each with its own engine and connections, without a second of imports each.
    A job without its own `now` runs at START, the clock the test's holds were made
    with: a worker on the wall clock would see those holds expire once that date passed.
    """
    workers: list[tuple[zygote.Child, Connection]] = []

    async def receive(connection: Connection) -> str:
        if not await asyncio.to_thread(connection.poll, WORKER_TIMEOUT_S):
            raise TimeoutError("a ledger worker did not answer")
        return str(connection.recv())

    try:
        for job in jobs:
            ours, theirs = multiprocessing.Pipe()
            process = zygote.start("tests.ledger_worker:serve_fd", fds=[theirs.fileno()])
            theirs.close()
            workers.append((process, ours))
            ours.send(json.dumps({"url": url, "now": START.isoformat(), **job}))
        for process, connection in workers:
            line = await receive(connection)
            if line != "ready":
                pytest.fail(f"worker {process.pid} did not start: {line!r}")
        for _, connection in workers:  # the barrier: every worker is warm, now all go
            connection.send("go")
        lines = await asyncio.gather(*(receive(connection) for _, connection in workers))
        for process, _ in workers:
            await asyncio.to_thread(process.join, WORKER_TIMEOUT_S)
    finally:
        for process, connection in workers:
            connection.close()
            if process.poll() is None:
                process.kill()
                process.join()
    reports = []
    for (process, _), line in zip(workers, lines, strict=True):
        assert process.exitcode == 0, f"worker {process.pid} exited with {process.exitcode}"
        report = json.loads(line)
        unexpected = [o for o in report["outcomes"] if o.get("unexpected")]
        assert unexpected == [], unexpected
        reports.append(report)
    return reports


def by_id(jobs: list[Job], reports: list[dict[str, Any]]) -> list[tuple[Job, Outcome]]:
    """Each call with its outcome, over all workers."""
    pairs = []
    for job, report in zip(jobs, reports, strict=True):
        pairs.extend(zip(job["calls"], report["outcomes"], strict=True))
    return pairs


def assert_overlapped(reports: list[dict[str, Any]]) -> None:
    """The workers' bursts overlapped in time: they really raced."""
    assert max(r["started"] for r in reports) < min(r["finished"] for r in reports), reports


# ------------------------------------------------------------------ S3


K, N, PRICE = 17, 50, 300


@pytest.mark.parametrize("leftover", [0, PRICE - 1])
async def test_s3_holds_from_two_processes_exactly_k_succeed(
    ledger: Ledger, migrated_database_url: str, leftover: int
) -> None:
    """50 holds from two processes at once on a balance covering 17: exactly 17 succeed,
    the rest are refused for insufficient funds, and available ends at the leftover."""
    account = await funded(ledger, 1, K * PRICE + leftover)
    calls = [hold_call(f"s3-{i}", account, PRICE) for i in range(N)]
    jobs = [{"calls": calls[0::2]}, {"calls": calls[1::2]}]
    reports = await race(migrated_database_url, *jobs)
    assert_overlapped(reports)

    pairs = by_id(jobs, reports)
    won = {call["id"] for call, outcome in pairs if outcome["ok"]}
    refusals = Counter(outcome["error"] for _, outcome in pairs if not outcome["ok"])
    assert len(won) == K, (won, refusals)
    assert refusals == {"InsufficientFunds": N - K}
    for call, outcome in pairs:
        if outcome["ok"]:
            record = outcome["record"]
            assert (record["id"], record["kind"], record["amount"]) == (call["id"], "hold", PRICE)

    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending, balance.available) == (
        K * PRICE + leftover,
        K * PRICE,
        leftover,
    )
    holds = await hold_rows(ledger.engine, account)
    assert set(holds) == won
    assert {state for state, _, _ in holds.values()} == {"pending"}
    await check_invariants(ledger.engine)


# ------------------------------------------------------------------ S1


async def test_s1_same_hold_id_from_two_processes_makes_one_hold(
    ledger: Ledger, migrated_database_url: str
) -> None:
    """The same hold (same id, same parameters) fired 20 times from two processes: one
    hold, and every caller gets the same TransferRecord (I6, I9)."""
    account = await funded(ledger, 1, 10_000)
    calls = [hold_call("s1-h", account, 700) for _ in range(20)]
    jobs = [{"calls": calls[:10]}, {"calls": calls[10:]}]
    reports = await race(migrated_database_url, *jobs)
    assert_overlapped(reports)

    outcomes = [outcome for _, outcome in by_id(jobs, reports)]
    assert all(o["ok"] for o in outcomes), outcomes
    records = [o["record"] for o in outcomes]
    assert all(r == records[0] for r in records), records
    assert (records[0]["id"], records[0]["kind"], records[0]["amount"]) == ("s1-h", "hold", 700)
    # The caller in this process sees the very same record too.
    again = await ledger.hold(
        "s1-h", account, 700, expires_in=timedelta(seconds=600), reason="generation"
    )
    assert again.created_at.isoformat() == records[0]["created_at"]
    assert again.id == records[0]["id"] and again.amount == records[0]["amount"]

    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (10_000, 700)
    assert set(await hold_rows(ledger.engine, account)) == {"s1-h"}
    async with ledger.engine.connect() as conn:
        entries = await conn.scalar(text("SELECT COUNT(*) FROM entries WHERE transfer_id = 's1-h'"))
        keys = await conn.scalar(text("SELECT COUNT(*) FROM idempotency_keys WHERE key = 's1-h'"))
    assert (entries, keys) == (2, 1)
    await check_invariants(ledger.engine)


async def test_s1_same_id_other_parameters_from_two_processes(
    ledger: Ledger, migrated_database_url: str
) -> None:
    """One hold id fired 20 times from two processes, half with one amount and half with
    another: the first to commit wins; every call with the winner's parameters gets its
    record, every other one IdempotencyConflict, never a second hold (I6)."""
    account = await funded(ledger, 1, 10_000)
    calls = [hold_call("s1-x", account, 100 if i % 2 else 200) for i in range(20)]
    jobs = [{"calls": calls[:10]}, {"calls": calls[10:]}]
    reports = await race(migrated_database_url, *jobs)
    assert_overlapped(reports)

    pairs = by_id(jobs, reports)
    winners = {call["amount"] for call, outcome in pairs if outcome["ok"]}
    assert len(winners) == 1, pairs
    (amount,) = winners
    records = []
    for call, outcome in pairs:
        if call["amount"] == amount:
            assert outcome["ok"], outcome
            records.append(outcome["record"])
        else:
            assert (outcome["ok"], outcome["error"]) == (False, "IdempotencyConflict"), outcome
    assert len(records) == 10 and all(r == records[0] for r in records)
    assert records[0]["amount"] == amount

    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (10_000, amount)
    assert set(await hold_rows(ledger.engine, account)) == {"s1-x"}
    await check_invariants(ledger.engine)


async def test_s1_distinct_parameters_each_from_two_processes(
    ledger: Ledger, migrated_database_url: str
) -> None:
    """Twenty callers, twenty different amounts for one id: exactly one succeeds."""
    account = await funded(ledger, 1, 10_000)
    calls = [hold_call("s1-d", account, 100 + i) for i in range(20)]
    jobs = [{"calls": calls[0::2]}, {"calls": calls[1::2]}]
    pairs = by_id(jobs, await race(migrated_database_url, *jobs))
    won = [(call, outcome) for call, outcome in pairs if outcome["ok"]]
    assert len(won) == 1, pairs
    assert Counter(o["error"] for _, o in pairs if not o["ok"]) == {"IdempotencyConflict": 19}
    amount = won[0][0]["amount"]
    assert won[0][1]["record"]["amount"] == amount
    assert (await ledger.balance(account)).pending == amount
    await check_invariants(ledger.engine)


# ------------------------------------------------------------------ S7


async def make_holds(
    ledger: Ledger, account: int, prefix: str, amounts: list[int], expires_in: timedelta
) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(len(amounts))]
    for hold_id, amount in zip(ids, amounts, strict=True):
        await ledger.hold(hold_id, account, amount, expires_in=expires_in, reason="generation")
    return ids


async def test_s7_post_races_void_across_processes(
    ledger: Ledger, migrated_database_url: str
) -> None:
    """Thirty holds; one process posts each (some partially), another voids each, at once:
    every hold ends exactly once, the loser is told HoldNotPending, and the user pays
    exactly what the winning posts charged (I3, I4)."""
    rng = random.Random(7)
    amounts = [rng.randint(100, 900) for _ in range(30)]
    account = await funded(ledger, 1, sum(amounts) + 1_000)
    holds = await make_holds(ledger, account, "s7v", amounts, 10 * MINUTE)
    charge = {h: (None if i % 3 == 0 else amounts[i] - i) for i, h in enumerate(holds)}
    posts = [{"op": "post", "id": f"p-{h}", "hold": h, "amount": charge[h]} for h in holds]
    voids = [{"op": "void", "id": f"v-{h}", "hold": h} for h in holds]
    rng.shuffle(posts)
    rng.shuffle(voids)
    jobs = [{"calls": posts}, {"calls": voids}]
    reports = await race(migrated_database_url, *jobs)
    assert_overlapped(reports)

    outcomes = {call["id"]: outcome for call, outcome in by_id(jobs, reports)}
    rows = await hold_rows(ledger.engine, account)
    charged = 0
    for i, h in enumerate(holds):
        post, void = outcomes[f"p-{h}"], outcomes[f"v-{h}"]
        assert post["ok"] != void["ok"], (h, post, void)
        loser = void if post["ok"] else post
        assert loser["error"] == "HoldNotPending", loser
        state, posted_amount, resolution = rows[h]
        if post["ok"]:
            expected = amounts[i] if charge[h] is None else charge[h]
            assert post["record"]["amount"] == expected
            assert (state, posted_amount, resolution) == ("posted", expected, f"p-{h}")
            charged += expected
        else:
            assert (state, posted_amount, resolution) == ("voided", 0, f"v-{h}")
        assert [r[0] for r in await resolutions_of(ledger.engine, h)] == [resolution]

    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (sum(amounts) + 1_000 - charged, 0)
    revenue = await ledger.balance(await system_account(ledger.engine, "revenue"))
    assert (revenue.posted, revenue.pending) == (charged, 0)
    assert sum(r["deadlocks"] for r in reports) == 0
    await check_invariants(ledger.engine)


async def race_posts_and_sweeps(
    poster: Ledger, sweepers: list[Ledger], posts: list[tuple[str, str]]
) -> tuple[dict[str, TransferRecord | LedgerError], list[list[str]]]:
    async def post(transfer_id: str, hold_id: str) -> TransferRecord | LedgerError:
        try:
            return await poster.post(transfer_id, hold_id)
        except LedgerError as exc:
            return exc

    results = await asyncio.gather(
        *(post(t, h) for t, h in posts), *(sweeper.expire_due() for sweeper in sweepers)
    )
    outcomes = dict(zip((t for t, _ in posts), results[: len(posts)], strict=True))
    sweeps = [list(s) for s in results[len(posts) :]]  # type: ignore[arg-type]
    return outcomes, sweeps


async def test_s7_post_races_expiry(
    db_engine: AsyncEngine, deadlock_log: pytest.LogCaptureFixture
) -> None:
    """Holds due at START + 60 s. The poster's clock says START + 30 s (in time), three
    sweepers' clocks say START + 61 s (due): posts and sweeps race. Every hold ends
    exactly once, either posted or expired by one sweeper, and nothing expired is charged.
    The poster is the Ledger that made the holds; the sweepers are fresh instances."""
    owner_clock = Clock(START)
    owner = Ledger(db_engine, clock=owner_clock)
    amounts = [300 + 10 * i for i in range(30)]
    account = await funded(owner, 1, sum(amounts))
    holds = await make_holds(owner, account, "s7x", amounts, MINUTE)
    owner_clock.advance(30)
    sweepers = [Ledger(db_engine, clock=Clock(START + timedelta(seconds=61))) for _ in range(3)]
    posts = [(f"p-{h}", h) for h in reversed(holds)]  # the sweepers start from the front

    outcomes, sweeps = await race_posts_and_sweeps(owner, sweepers, posts)

    swept = [h for sweep in sweeps for h in sweep]
    assert len(swept) == len(set(swept)), sweeps  # no hold is expired twice
    rows = await hold_rows(db_engine, account)
    charged = 0
    for i, h in enumerate(holds):
        outcome = outcomes[f"p-{h}"]
        state, posted_amount, resolution = rows[h]
        if isinstance(outcome, TransferRecord):
            assert h not in swept
            assert (state, posted_amount, resolution) == ("posted", amounts[i], f"p-{h}")
            charged += amounts[i]
        else:
            assert isinstance(outcome, HoldNotPending), outcome
            assert h in swept
            assert (state, posted_amount, resolution) == ("expired", 0, f"x:{h}")
        assert len(await resolutions_of(db_engine, h)) == 1

    balance = await owner.balance(account)
    assert (balance.posted, balance.pending) == (sum(amounts) - charged, 0)
    assert deadlocks(deadlock_log) == 0, "lock order differs between Ledger instances"
    await check_invariants(db_engine)


async def test_s7_post_races_expiry_across_processes(
    ledger: Ledger, clock: Clock, migrated_database_url: str
) -> None:
    """The same race between processes: one posts (its clock in time), one runs three
    concurrent sweeps (its clock past the timeout)."""
    amounts = [200 + i for i in range(30)]
    account = await funded(ledger, 1, sum(amounts))
    holds = await make_holds(ledger, account, "s7p", amounts, MINUTE)
    posts = [{"op": "post", "id": f"p-{h}", "hold": h} for h in reversed(holds)]
    sweeps = [{"op": "expire_due"} for _ in range(3)]
    in_time = (START + timedelta(seconds=30)).isoformat()
    late = (START + timedelta(seconds=60)).isoformat()  # exactly at the timeout: due
    jobs = [{"calls": posts, "now": in_time}, {"calls": sweeps, "now": late}]
    reports = await race(migrated_database_url, *jobs)

    post_outcomes = {call["hold"]: o for call, o in zip(posts, reports[0]["outcomes"], strict=True)}
    swept = [h for o in reports[1]["outcomes"] for h in o["expired"]]
    assert len(swept) == len(set(swept))
    rows = await hold_rows(ledger.engine, account)
    charged = 0
    for i, h in enumerate(holds):
        outcome = post_outcomes[h]
        if outcome["ok"]:
            assert h not in swept and rows[h][0] == "posted"
            charged += amounts[i]
        else:
            assert outcome["error"] == "HoldNotPending" and h in swept
            assert rows[h] == ("expired", 0, f"x:{h}")
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (sum(amounts) - charged, 0)
    assert sum(r["deadlocks"] for r in reports) == 0
    await check_invariants(ledger.engine)


async def test_ledgers_with_cold_and_warm_caches_lock_in_one_order(
    db_engine: AsyncEngine, deadlock_log: pytest.LogCaptureFixture
) -> None:
    """A Ledger that has already made a hold (it knows the revenue account) places new holds
    while a fresh Ledger (a sweeper, or a process after restart) voids older ones of the
    same user. Both must lock the user's row before the system row, or PostgreSQL finds a
    deadlock, stalls deadlock_timeout (1 s) each time and may give up after the retries."""
    warm = Ledger(db_engine)
    account = await funded(warm, 1, 100_000)
    old = await make_holds(warm, account, "old", [10] * 15, 10 * MINUTE)
    cold = Ledger(db_engine)

    async def attempt(call: Any) -> TransferRecord | Exception:
        try:
            return await call
        except Exception as exc:
            return exc

    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                attempt(warm.hold(f"new-{i}", account, 10, expires_in=MINUTE, reason="g"))
                for i in range(15)
            ),
            *(attempt(cold.void(f"v-{h}", h)) for h in old),
        ),
        timeout=30,
    )
    failures = [r for r in results if not isinstance(r, TransferRecord)]
    assert failures == []
    assert deadlocks(deadlock_log) == 0, "lock order differs between Ledger instances"
    balance = await warm.balance(account)
    assert (balance.posted, balance.pending) == (100_000, 150)
    await check_invariants(db_engine)


# ------------------------------------------------------------------ S8


async def test_s8_late_posts_racing_sweeps_charge_nothing(
    db_engine: AsyncEngine, deadlock_log: pytest.LogCaptureFixture
) -> None:
    """A hold reaches its timeout; ten late posts (full and partial, each its own id) race
    two sweeps. Every post is refused (HoldExpired or HoldNotPending), the hold is expired
    exactly once, nothing is charged, and each refusal is replayed for its id (I9)."""
    clock = Clock(START)
    owner = Ledger(db_engine, clock=clock)
    account = await funded(owner, 1, 5_000)
    await owner.hold("s8", account, 2_000, expires_in=MINUTE, reason="generation")
    clock.advance(60)  # exactly at the timeout: a post is too late
    posters = [Ledger(db_engine, clock=clock) for _ in range(2)]

    async def late_post(i: int) -> LedgerError | TransferRecord:
        amount = None if i % 2 == 0 else 1_000 + i
        try:
            return await posters[i % 2].post(f"late-{i}", "s8", amount)
        except LedgerError as exc:
            return exc

    results = await asyncio.gather(
        *(late_post(i) for i in range(10)),
        *(Ledger(db_engine, clock=clock).expire_due() for _ in range(2)),
    )
    posts, sweeps = results[:10], results[10:]
    assert all(isinstance(r, HoldExpired | HoldNotPending) for r in posts), posts
    assert sorted(h for sweep in sweeps for h in sweep) in ([], ["s8"])  # type: ignore[union-attr]
    assert await resolutions_of(db_engine, "s8") == [("x:s8", "expire", 0)]
    hold = await owner.get_hold("s8")
    assert (hold.state, hold.posted_amount, hold.resolution_id) == ("expired", 0, "x:s8")
    balance = await owner.balance(account)
    assert (balance.posted, balance.pending, balance.available) == (5_000, 0, 5_000)
    revenue = await owner.balance(await system_account(db_engine, "revenue"))
    assert (revenue.posted, revenue.pending) == (0, 0)

    # A retry of each late post gets its first refusal again, never a charge.
    for i, first in enumerate(posts):
        amount = None if i % 2 == 0 else 1_000 + i
        with pytest.raises(type(first)):  # type: ignore[arg-type]
            await owner.post(f"late-{i}", "s8", amount)
    # And a post that arrives after the sweep is refused as well.
    with pytest.raises(HoldNotPending, match="expired"):
        await owner.post("later", "s8")
    assert (await owner.balance(account)).posted == 5_000
    assert deadlocks(deadlock_log) == 0
    await check_invariants(db_engine)


async def test_s8_post_after_the_sweeper_charges_nothing(ledger: Ledger, clock: Clock) -> None:
    """The sweeper expired the hold first; a partial post and a full post later are refused
    with HoldNotPending and charge nothing; a void is refused too."""
    account = await funded(ledger, 1, 1_000)
    await ledger.hold("h", account, 600, expires_in=MINUTE, reason="generation")
    clock.advance(3600)
    assert await ledger.expire_due() == ["h"]
    with pytest.raises(HoldNotPending, match="expired"):
        await ledger.post("p-part", "h", 100)
    with pytest.raises(HoldNotPending, match="expired"):
        await ledger.post("p-full", "h")
    with pytest.raises(HoldNotPending, match="expired"):
        await ledger.void("v", "h")
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (1_000, 0)
    assert await resolutions_of(ledger.engine, "h") == [("x:h", "expire", 0)]
