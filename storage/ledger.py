"""The ledger: balances in kopecks, moved by two-phase transfers (TigerBeetle's model).

A generation places a hold (pending debit), delivery posts it (charge, at most
the held amount, the rest released), failure voids it, and a hold nobody
resolved expires at its timeout. Every call takes a client-chosen id that is
both the transfer id and the idempotency key: the same id with the same
parameters returns the first outcome, refusals included (I6, I9); with other
parameters it is an error.

Concurrency. Each call is one transaction. A user's balance lives as running
totals on their account row, and every change is a conditional UPDATE whose
WHERE clause re-checks the rule it protects (enough available, hold still
pending), so the database decides races, not Python: on PostgreSQL the row lock
makes the second writer re-evaluate the condition after the first commits; on
SQLite the transaction starts with BEGIN IMMEDIATE, so writers queue. A system
account's totals are spread over shard rows (`AccountShard`), one per user
bucket, so the transfers of different users do not queue on one `revenue` row.
The user row is updated first and the shard last, so two transfers cannot
deadlock. A CHECK constraint on the account row is the last line (I2). Lock
conflicts, serialization failures and duplicate-key races roll the whole
transaction back and run it again: there are never partial entries (S15).

One authority. What each operation does is written once, in
`storage.ledger_program`. SQLite runs those programs statement by statement
(`storage.ledger_interpreter`); PostgreSQL runs each as one call of a function
compiled from the same statements (`storage.ledger_plpgsql`, installed by `trt
migrate`), because round trips and the driver's per-statement CPU were what kept
16 workers far below 1000 hold+post pairs/s. This class checks arguments, picks
the system accounts, retries and raises. Every ledger test runs on both databases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Select, and_, case, cast, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import ledger_functions as functions
from storage import ledger_plpgsql, one_statement
from storage.db import SQLITE_BEGIN, sqlite_writer
from storage.ledger_interpreter import Interpreter
from storage.ledger_program import NOW, TOTALS, expiry
from storage.ledger_values import (
    Balance,
    ExceedsHold,
    HoldExpired,
    HoldNotPending,
    HoldRecord,
    IdempotencyConflict,
    InsufficientFunds,
    LedgerError,
    Refusal,
    StatementLine,
    TransferRecord,
    UnknownAccount,
    UnknownHold,
    outcome_of,
    utc,
)
from storage.models import Account, AccountShard, Entry, Hold, Transfer, table_of
from storage.retry import is_transient_or_duplicate, with_retries

__all__ = [
    "Balance",
    "ExceedsHold",
    "HoldExpired",
    "HoldNotPending",
    "HoldRecord",
    "IdempotencyConflict",
    "InsufficientFunds",
    "Ledger",
    "LedgerError",
    "StatementLine",
    "TransferRecord",
    "UnknownAccount",
    "UnknownHold",
]

_T = TypeVar("_T")

_accounts = table_of(Account)
_transfers = table_of(Transfer)
_entries = table_of(Entry)
_holds = table_of(Hold)
_shards = table_of(AccountShard)

MAX_ID_LENGTH = 62  # the column holds 64: room for the "x:" of an expiry's id
EXPIRY_PREFIX = "x:"
ATTEMPTS = 12
# Calls a ledger function may lose to dead connections before giving up: more than a
# pool holds (DB_POOL_SIZE + DB_MAX_OVERFLOW), all of which a server restart kills.
DROPPED_CONNECTIONS = 64
BACKOFF_BASE_S = 0.005

# What a keyed operation's program takes beyond id, hash and clock.
Arguments = Callable[[AsyncConnection, datetime], Awaitable[dict[str, Any]]]
# Writes that belong to a transfer (its audit row, the promo claim it pays): run in the
# transfer's own transaction with its fresh outcome, never on a replay.
Companion = Callable[[AsyncConnection, "TransferRecord | Refusal"], Awaitable[None]]


# ------------------------------------------------------------------ helpers


def _request_hash(operation: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([operation, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_id(transfer_id: str) -> None:
    if not transfer_id or len(transfer_id) > MAX_ID_LENGTH:
        raise ValueError(f"transfer id must be 1..{MAX_ID_LENGTH} characters: {transfer_id!r}")
    if transfer_id.startswith(EXPIRY_PREFIX):
        raise ValueError(f"transfer ids starting {EXPIRY_PREFIX!r} are the ledger's own")


def _check_amount(amount: int, *, allow_zero: bool = False) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"amounts are integer kopecks, got {amount!r}")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValueError(f"amount must be positive kopecks, got {amount}")


def _expiry_id(hold_id: str) -> str:
    # Deterministic, so the sweeper and a late post can never expire one hold twice.
    return EXPIRY_PREFIX + hold_id


def _expiry_arguments(hold_id: str, now: datetime) -> dict[str, Any]:
    """The sweeper's call of `resolve`: the same expiry a late post makes."""
    call = expiry(hold_id, _expiry_id(hold_id))
    return {name: now if arg is NOW else arg for name, arg in call.args.items()}


def _is_new(result: dict[str, Any]) -> bool:
    return "replay" not in result and "conflict" not in result


# ------------------------------------------------------------------ ledger


class Ledger:
    """The money API. `clock` is injectable for timeouts; `fault` lets tests break a
    transaction at a named point (raising there rolls the whole call back)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], datetime] | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fault = fault
        self._system: dict[str, int] = {}
        # PostgreSQL runs each program as one call of its function; SQLite (one writer
        # at a time, no round trips) runs it statement by statement.
        self._functions = engine.dialect.name == "postgresql"
        self._interpreter = None if self._functions else Interpreter(engine.dialect.name)

    # ------------------------------------------------------------ plumbing

    def _checkpoint(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    async def _run(
        self,
        program: str,
        arguments: Arguments,
        also: Callable[[AsyncConnection, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Runs a program once, its own transaction (run again from the start on a
        conflict: never half-applied). `also(conn, result)` shares that transaction."""
        if self._interpreter is None:
            return await self._function(program, arguments, also)
        interpreter = self._interpreter

        async def once(conn: AsyncConnection) -> dict[str, Any]:
            now = self.clock()
            values = {"now": now, **await arguments(conn, now)}
            result = await interpreter.run(conn, program, values, self._checkpoint)
            if also is not None:
                await also(conn, result)
            return result

        return await self._transaction(once)

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """One transaction on SQLite, run again from the start on a conflict."""

        async def once() -> _T:
            async with sqlite_writer(self.engine), self.engine.connect() as conn:
                conn = await conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                async with conn.begin():
                    return await work(conn)

        return await with_retries(
            once, attempts=ATTEMPTS, base_s=BACKOFF_BASE_S, retry_on=is_transient_or_duplicate
        )

    async def _function(
        self,
        program: str,
        arguments: Arguments,
        also: Callable[[AsyncConnection, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """One call of a ledger function (PostgreSQL), a transaction by itself; run again
        on a conflict, and at once on a dropped connection (safe: a keyed call replays,
        an expiry finds its hold resolved). With a fault hook, the points the call went
        through are passed inside its transaction, so a fault raised there rolls it all
        back. With `also`, the call and `also(conn, result)` share one transaction."""
        function = ledger_plpgsql.function_name(program)

        def then(result: dict[str, Any]) -> None:
            for point in functions.passed_points(result):
                self._checkpoint(point)

        async def once() -> dict[str, Any]:
            async with self.engine.connect() as conn:
                now = self.clock()
                args = {"now": now, **await arguments(conn, now)}
                if also is not None:
                    if not conn.in_transaction():
                        await conn.begin()
                    result = await functions.call_in_transaction(conn, function, args)
                    if self.fault:
                        then(result)
                    await also(conn, result)
                    await conn.commit()
                    return result
                if conn.in_transaction():
                    # A lookup for the arguments began one; the call must not run inside it.
                    await conn.commit()
                return await functions.call(conn, function, args, then if self.fault else None)

        for dropped in range(DROPPED_CONNECTIONS + 1):
            try:
                return await with_retries(
                    once,
                    attempts=ATTEMPTS,
                    base_s=BACKOFF_BASE_S,
                    retry_on=is_transient_or_duplicate,
                )
            except DBAPIError as exc:
                # A dead connection fails at once and is dropped from the pool, so these
                # retries cost nothing and do not use up the conflict retries.
                if not exc.connection_invalidated or dropped == DROPPED_CONNECTIONS:
                    raise
        raise AssertionError("unreachable")

    async def _keyed(
        self,
        operation: str,
        key: str,
        params: dict[str, Any],
        arguments: Arguments,
        also: Companion | None = None,
    ) -> TransferRecord:
        """Runs the operation's program once per key; later calls replay its outcome
        (I6, I9). `also` runs in the same transaction when the outcome is new (a
        transfer or a refusal, not a replay), so what it writes commits with the money
        or not at all; raising there undoes the call."""
        _check_id(key)
        digest = _request_hash(operation, params)

        async def keyed(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"id": key, "hash": digest, **await arguments(conn, now)}

        async def also_called(conn: AsyncConnection, called: dict[str, Any]) -> None:
            if also is not None and _is_new(called):
                await also(conn, outcome_of(called, operation, key))

        called = await self._run(operation, keyed, also_called if also else None)
        result = outcome_of(called, operation, key)
        if isinstance(result, Refusal):
            raise result.error
        return result

    async def _system_account(self, conn: AsyncConnection, code: str) -> int:
        if code not in self._system:
            found = await conn.scalar(select(_accounts.c.id).where(_accounts.c.code == code))
            if found is None:
                raise UnknownAccount(f"no system account {code!r}; run `trt migrate`")
            self._system[code] = int(found)
        return self._system[code]

    # ------------------------------------------------------------ the API

    async def credit(
        self,
        transfer_id: str,
        account_id: int,
        amount: int,
        *,
        source: str,
        reason: str,
        note: str | None = None,
        also: Companion | None = None,
    ) -> TransferRecord:
        """Money in: from system account `source` (topups, bonus, adjustments) to the user.
        `also`: writes that commit with it (see `_keyed`)."""
        _check_amount(amount)
        params = {"account": account_id, "amount": amount, "source": source, "reason": reason}

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            src = await self._system_account(conn, source)
            return dict(account=account_id, amount=amount, source=src, reason=reason, note=note)

        return await self._keyed("credit", transfer_id, params, arguments, also)

    async def debit(
        self,
        transfer_id: str,
        account_id: int,
        amount: int,
        *,
        destination: str,
        reason: str,
        note: str | None = None,
        also: Companion | None = None,
    ) -> TransferRecord:
        """Money out of available balance at once (admin debit, refund); never below zero.
        `also`: writes that commit with it (see `_keyed`)."""
        _check_amount(amount)
        params = {"account": account_id, "amount": amount, "dest": destination, "reason": reason}

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            dst = await self._system_account(conn, destination)
            return dict(
                account=account_id, amount=amount, destination=dst, reason=reason, note=note
            )

        return await self._keyed("debit", transfer_id, params, arguments, also)

    async def hold(
        self,
        hold_id: str,
        account_id: int,
        amount: int,
        *,
        expires_in: timedelta,
        reason: str,
        note: str | None = None,
        destination: str = "revenue",
    ) -> TransferRecord:
        """Sets `amount` aside until post, void or `expires_in`; refused when not available."""
        _check_amount(amount)
        if expires_in <= timedelta(0):
            raise ValueError("a hold needs a positive timeout")
        params = {
            "account": account_id,
            "amount": amount,
            "expires_in": expires_in.total_seconds(),
            "dest": destination,
            "reason": reason,
        }

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            dst = await self._system_account(conn, destination)
            return dict(
                account=account_id,
                amount=amount,
                timeout_at=now + expires_in,
                destination=dst,
                reason=reason,
                note=note,
            )

        return await self._keyed("hold", hold_id, params, arguments)

    async def post(
        self, transfer_id: str, hold_id: str, amount: int | None = None
    ) -> TransferRecord:
        """Charges up to the held amount (all of it when None); the rest is released.

        After the timeout the hold expires instead and HoldExpired is raised (S8).
        """
        if amount is not None:
            _check_amount(amount, allow_zero=True)
        params = {"hold": hold_id, "amount": amount}

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"hold": hold_id, "amount": amount, "expiry_id": _expiry_id(hold_id)}

        return await self._keyed("post", transfer_id, params, arguments)

    async def void(self, transfer_id: str, hold_id: str) -> TransferRecord:
        """Releases the whole hold."""
        params = {"hold": hold_id}

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"hold": hold_id}

        return await self._keyed("void", transfer_id, params, arguments)

    async def expire_due(self, limit: int = 500) -> list[str]:
        """Expires pending holds past their timeout (I8); the sweeper calls this periodically.
        Returns the ids of the holds it expired; one transaction per hold, so one that a
        post or void wins meanwhile is simply skipped. (On PostgreSQL, an expiry whose
        reply was lost with its connection is retried, finds the hold expired and is not
        listed; the hold is expired all the same.)"""
        now = self.clock()
        async with self.engine.connect() as conn:
            due = list(
                (
                    await conn.execute(
                        select(_holds.c.id)
                        .where(_holds.c.state == "pending", _holds.c.timeout_at <= now)
                        .order_by(_holds.c.timeout_at)
                        .limit(limit)
                    )
                ).scalars()
            )
        expired = []
        for hold_id in due:

            async def arguments(
                conn: AsyncConnection, _: datetime, hold_id: str = hold_id
            ) -> dict[str, Any]:
                # The sweep's clock, not the call's: due is due as of the sweep.
                return _expiry_arguments(hold_id, now)

            if "transfer" in await self._run("resolve", arguments):
                expired.append(hold_id)
        return expired

    # ------------------------------------------------------------ reading

    async def balance(self, account_id: int) -> Balance:
        row = await one_statement.read(self.engine, balance_query(account_id))
        if row is None:
            raise UnknownAccount(f"no account {account_id}")
        return Balance(
            posted=row.credits_posted - row.debits_posted,
            pending=row.debits_pending - row.credits_pending,
        )

    async def get_hold(self, hold_id: str) -> HoldRecord:
        row = await one_statement.read(self.engine, select(_holds).where(_holds.c.id == hold_id))
        if row is None:
            raise UnknownHold(f"no hold '{hold_id}'")
        return HoldRecord(
            id=row.id,
            account_id=row.account_id,
            amount=row.amount,
            state=row.state,
            timeout_at=utc(row.timeout_at),
            resolution_id=row.resolution_id,
            posted_amount=row.posted_amount,
        )

    async def statement(
        self, account_id: int, *, limit: int = 20, before: int | None = None
    ) -> list[StatementLine]:
        """The account's last transfers, newest first; `before` pages by entry id."""
        rows = await one_statement.read_all(self.engine, statement_query(account_id, limit, before))
        return [
            StatementLine(
                transfer_id=r.id,
                kind=r.kind,
                reason=r.reason,
                note=r.note,
                posted=int(r.posted or 0),
                pending=int(r.pending or 0),
                at=utc(r.created_at),
            )
            for r in rows
        ]


# Every account's totals as SQL (id and the four totals): its row plus its shards. For
# checks and reports over all accounts; one account's balance is `balance_query`.
ACCOUNT_TOTALS_SQL = (
    "SELECT a.id, a.allow_negative, "
    + ", ".join(f"a.{col} + COALESCE(s.{col}, 0) AS {col}" for col in TOTALS)
    + " FROM accounts a LEFT JOIN (SELECT account_id, "
    + ", ".join(f"SUM({col}) AS {col}" for col in TOTALS)
    + " FROM account_shards GROUP BY account_id) s ON s.account_id = a.id"
)


def balance_query(account_id: int) -> Select[Any]:
    """The query `Ledger.balance` runs: the account row by primary key, plus its shards
    (only system accounts have any)."""
    a, shard = _accounts.c, _shards.c
    totals: list[Any] = [
        cast(a[col] + func.coalesce(func.sum(shard[col]), 0), BigInteger).label(col)
        for col in TOTALS
    ]
    return (
        select(*totals)
        .select_from(_accounts.outerjoin(_shards, shard.account_id == a.id))
        .where(a.id == account_id)
        .group_by(a.id)
    )


def statement_query(account_id: int, limit: int = 20, before: int | None = None) -> Select[Any]:
    """The query `Ledger.statement` runs: the account's transfers with the newest entries
    first, each with its posted and pending sums for the account; `before` pages by
    entry id.

    A transfer has at most two entries per account (a post: the released hold and the
    charge), so the transfers of the last `limit` are among those of the account's last
    2 * limit entries: only that window is read from the index, not every entry of the
    account (the revenue account has millions). Their sums then take all their entries.
    """
    e, t = _entries.c, _transfers.c
    window = select(e.transfer_id).where(e.account_id == account_id)
    if before is not None:
        window = window.where(e.id < before)
    window_ids = window.order_by(e.id.desc()).limit(2 * limit).subquery()
    # Distinct, so a post's two entries in the window do not count its sums twice;
    # the join starts from these few ids (SQLite would otherwise scan the account).
    recent = select(window_ids.c.transfer_id).distinct().subquery()
    last_entry = func.max(e.id).label("last_entry")
    posted = func.sum(case((e.pending.is_(False), e.amount), else_=0)).label("posted")
    pending = func.sum(case((e.pending.is_(True), e.amount), else_=0)).label("pending")
    query = (
        select(t.id, t.kind, t.reason, t.note, t.created_at, posted, pending, last_entry)
        .select_from(recent)
        # `account_id + 0`: not an indexable term, so the entries are found by transfer
        # id; SQLite's planner would otherwise look them up by account, which for the
        # revenue account means reading all of its entries once per transfer.
        .join(
            _entries,
            and_(e.transfer_id == recent.c.transfer_id, e.account_id + 0 == account_id),
        )
        .join(_transfers, t.id == e.transfer_id)
        .group_by(t.id, t.kind, t.reason, t.note, t.created_at)
        .order_by(last_entry.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(e.id < before)
    return query
