"""Each ledger call and each refusal, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta

import pytest
from sqlalchemy import JSON, bindparam, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import create_engine
from storage.ledger import (
    ExceedsHold,
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    Ledger,
    LedgerError,
    UnknownAccount,
    UnknownHold,
)
from storage.settings import DatabaseSettings
from storage.users import ensure_user
from tests.ledger_support import Clock, check_invariants

MINUTE = timedelta(minutes=1)


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(db_engine: AsyncEngine, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = Ledger(db_engine, clock=clock)
    yield ledger
    await check_invariants(db_engine)


async def funded(ledger: Ledger, user_id: int, amount: int) -> int:
    account = await ensure_user(ledger.engine, user_id)
    if amount:
        await ledger.credit(f"top-{user_id}", account, amount, source="topups", reason="topup")
    return account


async def test_ensure_user_is_idempotent_and_ignores_self_referral(ledger: Ledger) -> None:
    first = await ensure_user(ledger.engine, 1, referrer_id=1)
    assert await ensure_user(ledger.engine, 1) == first
    other = await ensure_user(ledger.engine, 2, referrer_id=1)
    assert other != first
    async with ledger.engine.connect() as conn:
        refs = dict((await conn.execute(text("SELECT id, referrer_id FROM users"))).all())
    assert refs == {1: None, 2: 1}


async def test_credit_then_balance(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 0)
    record = await ledger.credit("c1", account, 10_000, source="topups", reason="topup")
    assert (record.kind, record.amount, record.credit_account_id) == ("credit", 10_000, account)
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending, balance.available) == (10_000, 0, 10_000)


async def test_hold_then_full_post(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation", note="Flux")
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending, balance.available) == (10_000, 3_000, 7_000)
    record = await ledger.post("p1", "h1")
    assert (record.kind, record.amount, record.pending_id) == ("post", 3_000, "h1")
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending, balance.available) == (7_000, 0, 7_000)
    hold = await ledger.get_hold("h1")
    assert (hold.state, hold.posted_amount, hold.resolution_id) == ("posted", 3_000, "p1")
    revenue = await ledger.balance(await ledger_account(ledger, "revenue"))
    assert revenue.posted == 3_000


async def ledger_account(ledger: Ledger, code: str) -> int:
    async with ledger.engine.connect() as conn:
        found = await conn.scalar(text("SELECT id FROM accounts WHERE code = :c"), {"c": code})
    assert found is not None
    return int(found)


async def test_partial_post_releases_the_rest(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    await ledger.post("p1", "h1", 1_200)
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (8_800, 0)


async def test_post_more_than_held_is_refused(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    with pytest.raises(ExceedsHold):
        await ledger.post("p1", "h1", 3_001)
    assert (await ledger.get_hold("h1")).state == "pending"


async def test_void_releases_everything(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    record = await ledger.void("v1", "h1")
    assert (record.kind, record.amount) == ("void", 0)
    assert (await ledger.balance(account)).available == 10_000
    assert (await ledger.get_hold("h1")).state == "voided"


async def test_a_hold_ends_exactly_once(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    await ledger.post("p1", "h1")
    with pytest.raises(HoldNotPending, match="already posted"):
        await ledger.void("v1", "h1")
    with pytest.raises(HoldNotPending):
        await ledger.post("p2", "h1")
    assert (await ledger.balance(account)).posted == 7_000


async def test_insufficient_funds(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 1_000)
    with pytest.raises(InsufficientFunds):
        await ledger.hold("h1", account, 1_001, expires_in=MINUTE, reason="generation")
    await ledger.hold("h2", account, 600, expires_in=MINUTE, reason="generation")
    with pytest.raises(InsufficientFunds):
        await ledger.hold("h3", account, 401, expires_in=MINUTE, reason="generation")
    with pytest.raises(InsufficientFunds):
        await ledger.debit("d1", account, 401, destination="adjustments", reason="admin")
    await ledger.debit("d2", account, 400, destination="adjustments", reason="admin")
    assert (await ledger.balance(account)).available == 0


async def test_same_id_same_parameters_returns_the_first_outcome(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    first = await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    again = await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    assert again == first
    assert (await ledger.balance(account)).pending == 3_000
    post = await ledger.post("p1", "h1")
    assert await ledger.post("p1", "h1") == post
    assert (await ledger.balance(account)).posted == 7_000


async def test_a_refusal_is_replayed_too(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 100)
    with pytest.raises(InsufficientFunds):
        await ledger.hold("h1", account, 500, expires_in=MINUTE, reason="generation")
    await ledger.credit("c2", account, 1_000, source="topups", reason="topup")
    # Same id, same parameters: the first outcome stands even though money arrived (I9).
    with pytest.raises(InsufficientFunds):
        await ledger.hold("h1", account, 500, expires_in=MINUTE, reason="generation")
    await ledger.hold("h2", account, 500, expires_in=MINUTE, reason="generation")


async def test_same_id_other_parameters_is_an_error(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    with pytest.raises(IdempotencyConflict):
        await ledger.hold("h1", account, 3_001, expires_in=MINUTE, reason="generation")
    with pytest.raises(IdempotencyConflict):
        await ledger.credit("h1", account, 3_000, source="topups", reason="topup")
    assert (await ledger.balance(account)).pending == 3_000


async def test_post_after_timeout_expires_the_hold_and_charges_nothing(
    ledger: Ledger, clock: Clock
) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    clock.advance(60)
    with pytest.raises(HoldExpired):
        await ledger.post("p1", "h1")
    assert (await ledger.get_hold("h1")).state == "expired"
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (10_000, 0)
    with pytest.raises(HoldExpired):
        await ledger.post("p1", "h1")  # the refusal is replayed
    with pytest.raises(HoldNotPending, match="expired"):
        await ledger.post("p2", "h1")


async def test_refusals_read_the_same_on_both_databases(ledger: Ledger, clock: Clock) -> None:
    """PostgreSQL's functions write the refusals SQLite's path writes, word for word;
    they are stored with their keys and shown again on every retry."""
    account = await funded(ledger, 1, 1_000)
    refusals: list[str] = []

    async def refused(call: Awaitable[object]) -> None:
        with pytest.raises(LedgerError) as caught:
            await call
        refusals.append(f"{caught.value.code}: {caught.value.message}")

    await refused(ledger.hold("h1", account, 5_000, expires_in=MINUTE, reason="generation"))
    await refused(ledger.credit("c1", 999_999, 5, source="topups", reason="topup"))
    await refused(ledger.debit("d1", 999_999, 5, destination="adjustments", reason="x"))
    await ledger.hold("h2", account, 300, expires_in=MINUTE, reason="generation")
    await refused(ledger.post("p1", "h2", 301))
    await refused(ledger.post("p2", "nope"))
    await ledger.void("v1", "h2")
    await refused(ledger.void("v2", "h2"))
    await ledger.hold("h3", account, 300, expires_in=MINUTE, reason="generation")
    clock.advance(61)
    await refused(ledger.post("p3", "h3"))
    assert refusals == [
        f"insufficient_funds: account {account} lacks 5000",
        "unknown_account: no account 999999",
        "unknown_account: no account 999999",
        "exceeds_hold: charge 301 exceeds hold 300",
        "unknown_hold: no hold 'nope'",
        "hold_not_pending: hold 'h2' is already voided",
        "hold_expired: hold 'h3' timed out at 2026-11-29 12:01:00.000000+00:00",
    ]


async def test_refusals_replay_word_for_word_also_from_keys_of_earlier_releases(
    ledger: Ledger, db_engine: AsyncEngine
) -> None:
    """A refusal is kept with its key as its code and values; a retry reads the same
    words. Keys written before the values were kept hold the message itself, and
    replay it unchanged."""
    account = await funded(ledger, 1, 100)
    first: list[str] = []
    for _ in range(2):
        with pytest.raises(InsufficientFunds) as caught:
            await ledger.hold("h1", account, 500, expires_in=MINUTE, reason="generation")
        first.append(caught.value.message)
    assert first == [f"account {account} lacks 500"] * 2

    async with db_engine.begin() as conn:
        await conn.execute(
            text("UPDATE idempotency_keys SET outcome = :outcome WHERE key = 'h1'").bindparams(
                bindparam("outcome", type_=JSON)
            ),
            {"outcome": {"refused": "insufficient_funds", "message": "as an old release said"}},
        )
    with pytest.raises(InsufficientFunds, match=r"^as an old release said$"):
        await ledger.hold("h1", account, 500, expires_in=MINUTE, reason="generation")


async def test_sweeper_expires_only_due_holds(ledger: Ledger, clock: Clock) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("short", account, 1_000, expires_in=MINUTE, reason="generation")
    await ledger.hold("long", account, 2_000, expires_in=10 * MINUTE, reason="generation")
    assert await ledger.expire_due() == []
    clock.advance(61)
    assert await ledger.expire_due() == ["short"]
    assert await ledger.expire_due() == []
    balance = await ledger.balance(account)
    assert (balance.pending, balance.available) == (2_000, 8_000)
    # A void after expiry is refused; the sweep is never charged.
    with pytest.raises(HoldNotPending):
        await ledger.void("v1", "short")


async def test_unknown_account_and_hold(ledger: Ledger) -> None:
    with pytest.raises(UnknownAccount):
        await ledger.credit("c1", 999_999, 100, source="topups", reason="topup")
    with pytest.raises(UnknownAccount):
        await ledger.credit("c2", await funded(ledger, 1, 0), 100, source="nope", reason="x")
    with pytest.raises(UnknownHold):
        await ledger.post("p1", "never-held")
    with pytest.raises(UnknownAccount):
        await ledger.balance(999_999)


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
async def test_amounts_are_positive_integer_kopecks(ledger: Ledger, amount: object) -> None:
    account = await funded(ledger, 1, 0)
    with pytest.raises((ValueError, TypeError)):
        await ledger.credit("c1", account, amount, source="topups", reason="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_id", ["", "x" * 63, "x:reserved"])
async def test_ids_are_checked(ledger: Ledger, bad_id: str) -> None:
    account = await funded(ledger, 1, 0)
    with pytest.raises(ValueError):
        await ledger.credit(bad_id, account, 1, source="topups", reason="x")


async def test_statement_lists_movements_newest_first(ledger: Ledger) -> None:
    account = await funded(ledger, 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation", note="Flux")
    await ledger.post("p1", "h1", 2_500)
    await ledger.hold("h2", account, 1_000, expires_in=MINUTE, reason="generation")
    lines = await ledger.statement(account)
    assert [(x.transfer_id, x.kind, x.posted, x.pending) for x in lines] == [
        ("h2", "hold", 0, -1_000),
        ("p1", "post", -2_500, 3_000),
        ("h1", "hold", 0, -3_000),
        ("top-1", "credit", 10_000, 0),
    ]
    assert lines[2].note == "Flux" and lines[1].reason == "generation"
    assert len(await ledger.statement(account, limit=2)) == 2


async def test_statement_pages_agree_with_the_entries(
    ledger: Ledger, db_engine: AsyncEngine
) -> None:
    """Posts have two entries per account, holds and credits one: every limit must still
    give whole transfers with their full sums, newest first, and pages by entry id must
    join up into the whole history."""
    account = await funded(ledger, 1, 100_000)
    for n in range(23):
        await ledger.hold(f"h{n}", account, 100 + n, expires_in=MINUTE, reason="generation")
        if n % 3 == 0:
            await ledger.post(f"p{n}", f"h{n}", 50)
        elif n % 3 == 1:
            await ledger.void(f"v{n}", f"h{n}")
        if n % 5 == 0:
            await ledger.credit(f"c{n}", account, 7, source="bonus", reason="promo")
    async with db_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, transfer_id, amount, pending FROM entries "
                    "WHERE account_id = :a ORDER BY id"
                ),
                {"a": account},
            )
        ).all()
    sums: dict[str, list[int]] = {}  # transfer -> [posted, pending, first entry, last entry]
    for entry_id, transfer, amount, pending in rows:
        found = sums.setdefault(transfer, [0, 0, entry_id, entry_id])
        found[1 if pending else 0] += amount
        found[3] = entry_id
    history = [
        (transfer, found[0], found[1])
        for transfer, found in sorted(sums.items(), key=lambda item: -item[1][3])
    ]
    assert len(history) == 1 + 23 + 8 + 8 + 5  # top-up, holds, posts, voids, credits
    assert len(rows) == len(history) + 8  # each post has two entries
    for limit in range(1, len(history) + 2):
        lines = await ledger.statement(account, limit=limit)
        assert [(x.transfer_id, x.posted, x.pending) for x in lines] == history[:limit]
    for limit in (1, 2, 3, 7):
        pages: list[tuple[str, int, int]] = []
        before: int | None = None
        while page := await ledger.statement(account, limit=limit, before=before):
            pages += [(x.transfer_id, x.posted, x.pending) for x in page]
            before = min(sums[x.transfer_id][2] for x in page)
        assert pages == history, limit


async def test_database_enforces_non_negative_balance(ledger: Ledger) -> None:
    """The CHECK constraint is the last line behind the conditional updates (I2)."""
    account = await funded(ledger, 1, 100)
    with pytest.raises(IntegrityError):
        async with ledger.engine.begin() as conn:
            await conn.execute(
                text("UPDATE accounts SET debits_posted = debits_posted + 101 WHERE id = :a"),
                {"a": account},
            )


async def test_crash_mid_transfer_leaves_nothing_and_a_retry_succeeds(
    db_engine: AsyncEngine, clock: Clock
) -> None:
    class Crash(Exception):
        pass

    armed = {"after_entries"}

    def fault(point: str) -> None:
        if point in armed:
            armed.discard(point)
            raise Crash(point)

    ledger = Ledger(db_engine, clock=clock, fault=fault)
    account = await funded(Ledger(db_engine, clock=clock), 1, 10_000)
    with pytest.raises(Crash):
        await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    await check_invariants(db_engine)
    assert (await ledger.balance(account)).pending == 0
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    assert (await ledger.balance(account)).pending == 3_000
    await check_invariants(db_engine)


async def test_lock_conflict_mid_transfer_is_retried_without_partial_entries(
    db_engine: AsyncEngine, clock: Clock
) -> None:
    """S15: the conflict strikes after the account rows changed; the rerun applies once."""
    strikes = []

    def fault(point: str) -> None:
        if point == "after_account_update" and len(strikes) < 2:
            strikes.append(point)
            raise OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))

    ledger = Ledger(db_engine, clock=clock, fault=fault)
    account = await funded(Ledger(db_engine, clock=clock), 1, 10_000)
    await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
    assert len(strikes) == 2
    balance = await ledger.balance(account)
    assert (balance.posted, balance.pending) == (10_000, 3_000)
    async with db_engine.connect() as conn:
        count = await conn.scalar(text("SELECT COUNT(*) FROM entries WHERE transfer_id = 'h1'"))
    assert count == 2
    await check_invariants(db_engine)


POOL = 20  # more than storage.ledger.ATTEMPTS


@pytest.mark.parametrize("migrated_database_url", ["postgresql"], indirect=True)
async def test_connections_the_server_dropped_are_replaced_and_the_call_applies_once(
    migrated_database_url: str, postgres_admin_url: URL, clock: Clock
) -> None:
    """Without pool pre-ping (the default), every pooled connection may be dead after a
    server restart. More of them than the ledger's retries: the first failure must make
    the pool drop them all, so the retry runs on a new connection, and applies once."""
    engine = create_engine(
        DatabaseSettings(
            database_url=migrated_database_url, DB_POOL_SIZE=POOL, DB_POOL_PRE_PING=False
        )
    )
    try:
        ledger = Ledger(engine, clock=clock)
        account = await funded(ledger, 1, 10_000)
        # Looked up once, the revenue account's id is not asked again: from here on only
        # the ledger's own calls meet the dead connections.
        await ledger.hold("h0", account, 1_000, expires_in=MINUTE, reason="generation")
        await ledger.void("v0", "h0")
        held = [engine.connect() for _ in range(POOL)]
        for conn in held:  # a full pool, every connection of it about to die
            await conn.start()
        for conn in held:
            await conn.close()
        admin = create_async_engine(postgres_admin_url, poolclass=NullPool)
        try:
            async with admin.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name"
                    ),
                    {"name": make_url(migrated_database_url).database},
                )
        finally:
            await admin.dispose()
        assert killed == POOL, killed
    except BaseException:
        await engine.dispose()
        raise
    try:
        record = await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
        assert record.amount == 3_000
        balance = await ledger.balance(account)
        assert (balance.posted, balance.pending) == (10_000, 3_000)
        again = await ledger.hold("h1", account, 3_000, expires_in=MINUTE, reason="generation")
        assert again == record
        await check_invariants(engine)
    finally:
        await engine.dispose()
