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

Two paths, one behaviour. SQLite runs the portable path written here, statement
by statement. PostgreSQL runs each write as a single call of a PL/pgSQL function
(migration 0005, `storage.ledger_functions`) that takes the same steps, because
round trips and the driver's per-statement CPU were what kept 16 workers far
below 1000 hold+post pairs/s. Every ledger test runs on both databases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Select, and_, case, cast, func, insert, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import ledger_functions as functions
from storage.db import SQLITE_BEGIN, sqlite_writer
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
    conflict,
    refusal_from,
    transfer_record,
    utc,
)
from storage.models import Account, AccountShard, Entry, Hold, IdempotencyKey, Transfer, table_of
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
_keys = table_of(IdempotencyKey)
_shards = table_of(AccountShard)

SCOPE = "ledger"
MAX_ID_LENGTH = 62  # the column holds 64: room for the "x:" of an expiry's id
EXPIRY_PREFIX = "x:"
ATTEMPTS = 12
# Calls a ledger function may lose to dead connections before giving up: more than a
# pool holds (DB_POOL_SIZE + DB_MAX_OVERFLOW), all of which a server restart kills.
DROPPED_CONNECTIONS = 64
BACKOFF_BASE_S = 0.005
# Rows per system account for its running totals, chosen by the user's account id.
# With 16 concurrent writers, a given one shares its shard with another about a fifth
# of the time, and then waits for that one commit only; a balance sums at most 64 rows.
SHARDS = 64
TOTALS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")

# What a keyed operation's PostgreSQL function takes beyond id, hash, clock and shards.
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
        # PostgreSQL runs each write as one call of a function of migration 0005;
        # SQLite (one writer at a time, no round trips) runs the portable path below.
        self._functions = engine.dialect.name == "postgresql"

    # ------------------------------------------------------------ plumbing

    def _checkpoint(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """One transaction of the portable path, run again from the start on a conflict
        (never half-applied)."""

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
        function: str,
        operation: str | None,
        arguments: Arguments,
        also: Callable[[AsyncConnection, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """One call of a ledger function (PostgreSQL), a transaction by itself; run again
        on a conflict, and at once on a dropped connection (safe: a keyed call replays,
        an expiry finds its hold resolved). With a fault hook, the points the call went
        through are passed inside its transaction, so a fault raised there rolls it all
        back. With `also`, the call and `also(conn, result)` share one transaction."""

        def then(result: dict[str, Any]) -> None:
            self._passed(functions.passed_points(operation, result))

        async def once() -> dict[str, Any]:
            async with self.engine.connect() as conn:
                now = self.clock()
                args = {"now": now, "shards": SHARDS, **await arguments(conn, now)}
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
        work: Callable[[AsyncConnection, datetime], Awaitable[TransferRecord | Refusal]],
        arguments: Arguments,
        also: Companion | None = None,
    ) -> TransferRecord:
        """Runs `work` (or on PostgreSQL its function, with `arguments`) once per key;
        later calls replay its outcome (I6, I9). `also` runs in the same transaction
        when the outcome is new (a transfer or a refusal, not a replay), so what it
        writes commits with the money or not at all; raising there undoes the call."""
        _check_id(key)
        digest = _request_hash(operation, params)

        async def keyed(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"id": key, "hash": digest, **await arguments(conn, now)}

        async def attempt(conn: AsyncConnection) -> TransferRecord | Refusal:
            found = (
                await conn.execute(
                    select(_keys.c.request_hash, _keys.c.outcome).where(
                        _keys.c.scope == SCOPE, _keys.c.key == key
                    )
                )
            ).first()
            if found is not None:
                if found.request_hash != digest:
                    return conflict(key, operation)
                return await _replay(conn, found.outcome)
            now = self.clock()
            result = await work(conn, now)
            self._checkpoint(f"{operation}:before_key")
            outcome = (
                {"refused": result.error.code, "message": result.error.message}
                if isinstance(result, Refusal)
                else {"transfer": result.id}
            )
            await conn.execute(
                insert(_keys).values(
                    scope=SCOPE, key=key, request_hash=digest, outcome=outcome, created_at=now
                )
            )
            if also is not None:
                await also(conn, result)
            return result

        async def also_called(conn: AsyncConnection, called: dict[str, Any]) -> None:
            if also is not None and "replay" not in called and "conflict" not in called:
                await also(conn, functions.outcome(called, operation, key))

        if self._functions:
            called = await self._function(
                f"ledger_{operation}", operation, keyed, also_called if also else None
            )
            result = functions.outcome(called, operation, key)
        else:
            result = await self._transaction(attempt)
        if isinstance(result, Refusal):
            raise result.error
        return result

    def _passed(self, points: list[str]) -> None:
        for point in points:
            self._checkpoint(point)

    async def _system_account(self, conn: AsyncConnection, code: str) -> int:
        if code not in self._system:
            found = await conn.scalar(select(_accounts.c.id).where(_accounts.c.code == code))
            if found is None:
                raise UnknownAccount(f"no system account {code!r}; run `trt migrate`")
            self._system[code] = int(found)
        return self._system[code]

    async def _move(
        self,
        conn: AsyncConnection,
        changes: dict[int, dict[str, int]],
        guard: int | None = None,
        *,
        user: int,
    ) -> bool:
        """Adds to account totals: the user's row, then the system account's shard for
        this user. With `guard`, the user row's update applies only if it keeps
        available >= 0; it goes first, so a refusal has changed nothing.

        Order: the user row first, the shard last. Every transfer touches exactly one user
        account, so this order never deadlocks. The caller names the user row: the order
        must not depend on which system accounts this instance has looked up so far.
        """
        assert guard is None or guard == user, (guard, user)
        deltas = changes[user]
        stmt = (
            update(_accounts)
            .where(_accounts.c.id == user)
            .values({col: _accounts.c[col] + delta for col, delta in deltas.items()})
        )
        if guard is not None:
            spent = deltas.get("debits_posted", 0) + deltas.get("debits_pending", 0)
            stmt = stmt.where(
                or_(
                    _accounts.c.allow_negative,
                    _accounts.c.credits_posted
                    - _accounts.c.debits_posted
                    - _accounts.c.debits_pending
                    >= spent,
                )
            )
        if (await conn.execute(stmt)).rowcount != 1:
            return False
        self._checkpoint("after_account_update")
        for account_id in sorted(account for account in changes if account != user):
            totals = {col: changes[account_id].get(col, 0) for col in TOTALS}
            upsert = sqlite_insert(_shards).values(
                account_id=account_id, shard=user % SHARDS, **totals
            )
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[_shards.c.account_id, _shards.c.shard],
                    set_={col: _shards.c[col] + upsert.excluded[col] for col in TOTALS},
                )
            )
            self._checkpoint("after_account_update")
        return True

    async def _record(
        self,
        conn: AsyncConnection,
        now: datetime,
        transfer: dict[str, Any],
        entries: list[tuple[int, int, bool]],
    ) -> TransferRecord:
        """Writes the transfer and its entries (account, signed amount, pending); sums to 0."""
        assert sum(amount for _, amount, _ in entries) == 0, entries
        row = {"pending_id": None, "note": None, **transfer, "created_at": now}
        await conn.execute(insert(_transfers).values(row))
        rows = [
            dict(transfer_id=row["id"], account_id=a, amount=v, pending=p, created_at=now)
            for a, v, p in entries
            if v != 0
        ]
        if rows:
            await conn.execute(insert(_entries), rows)
        self._checkpoint("after_entries")
        return TransferRecord(**row)

    async def _account_exists(self, conn: AsyncConnection, account_id: int) -> bool:
        found = await conn.scalar(select(_accounts.c.id).where(_accounts.c.id == account_id))
        return found is not None

    async def _short_or_unknown(
        self, conn: AsyncConnection, account_id: int, amount: int
    ) -> Refusal:
        """Why a guarded move of the user's row (which goes first, so nothing has changed)
        matched no row: the account is missing, or it lacks the money."""
        if not await self._account_exists(conn, account_id):
            return Refusal(UnknownAccount(f"no account {account_id}"))
        return Refusal(InsufficientFunds(f"account {account_id} lacks {amount}"))

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

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | Refusal:
            src = await self._system_account(conn, source)
            # The user's row goes first and is the only one that can be missing, so a
            # failed move has changed nothing (one round trip fewer than checking first).
            if not await self._move(
                conn,
                {src: {"debits_posted": amount}, account_id: {"credits_posted": amount}},
                user=account_id,
            ):
                return Refusal(UnknownAccount(f"no account {account_id}"))
            return await self._record(
                conn,
                now,
                dict(
                    id=transfer_id,
                    kind="credit",
                    debit_account_id=src,
                    credit_account_id=account_id,
                    amount=amount,
                    reason=reason,
                    note=note,
                ),
                [(src, -amount, False), (account_id, amount, False)],
            )

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            src = await self._system_account(conn, source)
            return dict(account=account_id, amount=amount, source=src, reason=reason, note=note)

        return await self._keyed("credit", transfer_id, params, work, arguments, also)

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

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | Refusal:
            dst = await self._system_account(conn, destination)
            if not await self._move(
                conn,
                {account_id: {"debits_posted": amount}, dst: {"credits_posted": amount}},
                guard=account_id,
                user=account_id,
            ):
                return await self._short_or_unknown(conn, account_id, amount)
            return await self._record(
                conn,
                now,
                dict(
                    id=transfer_id,
                    kind="debit",
                    debit_account_id=account_id,
                    credit_account_id=dst,
                    amount=amount,
                    reason=reason,
                    note=note,
                ),
                [(account_id, -amount, False), (dst, amount, False)],
            )

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            dst = await self._system_account(conn, destination)
            return dict(
                account=account_id, amount=amount, destination=dst, reason=reason, note=note
            )

        return await self._keyed("debit", transfer_id, params, work, arguments, also)

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

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | Refusal:
            dst = await self._system_account(conn, destination)
            if not await self._move(
                conn,
                {account_id: {"debits_pending": amount}, dst: {"credits_pending": amount}},
                guard=account_id,
                user=account_id,
            ):
                return await self._short_or_unknown(conn, account_id, amount)
            record = await self._record(
                conn,
                now,
                dict(
                    id=hold_id,
                    kind="hold",
                    debit_account_id=account_id,
                    credit_account_id=dst,
                    amount=amount,
                    reason=reason,
                    note=note,
                ),
                [(account_id, -amount, True), (dst, amount, True)],
            )
            await conn.execute(
                insert(_holds).values(
                    id=hold_id,
                    account_id=account_id,
                    amount=amount,
                    state="pending",
                    timeout_at=now + expires_in,
                )
            )
            return record

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

        return await self._keyed("hold", hold_id, params, work, arguments)

    async def _resolve(
        self,
        conn: AsyncConnection,
        now: datetime,
        transfer_id: str,
        hold_id: str,
        state: str,
        charge: int | None,
        *,
        require_unexpired: bool,
    ) -> TransferRecord | Refusal:
        """Moves a pending hold to `state` (exactly one caller wins, I3) and writes the
        transfer that releases it and, for a post, charges `charge` (I4)."""
        # The hold with its transfer's destination and reason (a transfer row never
        # changes): one round trip instead of three.
        hold = (
            await conn.execute(
                select(
                    _holds,
                    _transfers.c.credit_account_id,
                    _transfers.c.reason,
                    _transfers.c.note,
                )
                .join(_transfers, _transfers.c.id == _holds.c.id)
                .where(_holds.c.id == hold_id)
            )
        ).first()
        if hold is None:
            return Refusal(UnknownHold(f"no hold '{hold_id}'"))
        amount = charge if charge is not None else hold.amount
        if amount > hold.amount:
            return Refusal(ExceedsHold(f"charge {amount} exceeds hold {hold.amount}"))
        condition = and_(_holds.c.id == hold_id, _holds.c.state == "pending")
        if require_unexpired:
            condition = and_(condition, _holds.c.timeout_at > now)
        won = await conn.execute(
            update(_holds)
            .where(condition)
            .values(
                state=state,
                resolved_at=now,
                resolution_id=transfer_id,
                posted_amount=amount if state == "posted" else 0,
            )
        )
        if won.rowcount != 1:
            # Read again: a racing post, void or expiry may have committed since the first read.
            now_state = await conn.scalar(select(_holds.c.state).where(_holds.c.id == hold_id))
            if now_state != "pending":
                return Refusal(HoldNotPending(f"hold '{hold_id}' is already {now_state}"))
            # The same text as migration 0005's function writes, microseconds and all.
            timeout = utc(hold.timeout_at).isoformat(" ", "microseconds")
            return Refusal(HoldExpired(f"hold '{hold_id}' timed out at {timeout}"))
        user, dst = hold.account_id, hold.credit_account_id
        posted = amount if state == "posted" else 0
        await self._move(
            conn,
            {
                user: {"debits_pending": -hold.amount, "debits_posted": posted},
                dst: {"credits_pending": -hold.amount, "credits_posted": posted},
            },
            user=user,
        )
        return await self._record(
            conn,
            now,
            dict(
                id=transfer_id,
                kind={"posted": "post", "voided": "void", "expired": "expire"}[state],
                debit_account_id=user,
                credit_account_id=dst,
                amount=posted,
                pending_id=hold_id,
                reason=hold.reason,
                note=hold.note,
            ),
            [
                (user, hold.amount, True),
                (dst, -hold.amount, True),
                (user, -posted, False),
                (dst, posted, False),
            ],
        )

    async def post(
        self, transfer_id: str, hold_id: str, amount: int | None = None
    ) -> TransferRecord:
        """Charges up to the held amount (all of it when None); the rest is released.

        After the timeout the hold expires instead and HoldExpired is raised (S8).
        """
        if amount is not None:
            _check_amount(amount, allow_zero=True)
        params = {"hold": hold_id, "amount": amount}

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | Refusal:
            result = await self._resolve(
                conn, now, transfer_id, hold_id, "posted", amount, require_unexpired=True
            )
            if isinstance(result, Refusal) and isinstance(result.error, HoldExpired):
                # Release it now rather than leave it to the sweeper; the refusal stands.
                await self._resolve(
                    conn, now, _expiry_id(hold_id), hold_id, "expired", 0, require_unexpired=False
                )
            return result

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"hold": hold_id, "amount": amount}

        return await self._keyed("post", transfer_id, params, work, arguments)

    async def void(self, transfer_id: str, hold_id: str) -> TransferRecord:
        """Releases the whole hold."""
        params = {"hold": hold_id}

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | Refusal:
            return await self._resolve(
                conn, now, transfer_id, hold_id, "voided", 0, require_unexpired=False
            )

        async def arguments(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
            return {"hold": hold_id}

        return await self._keyed("void", transfer_id, params, work, arguments)

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
            if self._functions:

                async def arguments(
                    conn: AsyncConnection, _: datetime, hold_id: str = hold_id
                ) -> dict[str, Any]:
                    return dict(
                        transfer_id=_expiry_id(hold_id),
                        hold=hold_id,
                        state="expired",
                        charge=0,
                        require_unexpired=False,
                        now=now,
                    )

                if "transfer" in await self._function("ledger_resolve", None, arguments):
                    expired.append(hold_id)
                continue

            async def work(conn: AsyncConnection, hold_id: str = hold_id) -> bool:
                result = await self._resolve(
                    conn, now, _expiry_id(hold_id), hold_id, "expired", 0, require_unexpired=False
                )
                return not isinstance(result, Refusal)

            if await self._transaction(work):
                expired.append(hold_id)
        return expired

    # ------------------------------------------------------------ reading

    async def balance(self, account_id: int) -> Balance:
        async with self.engine.connect() as conn:
            row = (await conn.execute(balance_query(account_id))).first()
        if row is None:
            raise UnknownAccount(f"no account {account_id}")
        return Balance(
            posted=row.credits_posted - row.debits_posted,
            pending=row.debits_pending - row.credits_pending,
        )

    async def get_hold(self, hold_id: str) -> HoldRecord:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(_holds).where(_holds.c.id == hold_id))).first()
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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement_query(account_id, limit, before))).all()
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


def _expiry_id(hold_id: str) -> str:
    # Deterministic, so the sweeper and a late post can never expire one hold twice.
    return EXPIRY_PREFIX + hold_id


async def _replay(conn: AsyncConnection, outcome: dict[str, Any]) -> TransferRecord | Refusal:
    """The first outcome of a keyed call, from what its key stored."""
    if "refused" in outcome:
        return refusal_from(outcome)
    row = (
        await conn.execute(select(_transfers).where(_transfers.c.id == outcome["transfer"]))
    ).first()
    assert row is not None, outcome
    return transfer_record(dict(row._mapping))
