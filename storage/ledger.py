"""The ledger: balances in kopecks, moved by two-phase transfers (TigerBeetle's model).

A generation places a hold (pending debit), delivery posts it (charge, at most
the held amount, the rest released), failure voids it, and a hold nobody
resolved expires at its timeout. Every call takes a client-chosen id that is
both the transfer id and the idempotency key: the same id with the same
parameters returns the first outcome, refusals included (I6, I9); with other
parameters it is an error.

Concurrency. Each call is one transaction. Balances live as running totals on
the account row, and every change is a conditional UPDATE whose WHERE clause
re-checks the rule it protects (enough available, hold still pending), so the
database decides races, not Python: on PostgreSQL the row lock makes the
second writer re-evaluate the condition after the first commits; on SQLite the
transaction starts with BEGIN IMMEDIATE, so writers queue. Rows are updated in
account id order so two transfers cannot deadlock. A CHECK constraint on the
account row is the last line (I2). Lock conflicts, serialization failures and
duplicate-key races roll the whole transaction back and run it again: there
are never partial entries (S15).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, and_, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import SQLITE_BEGIN
from storage.models import Account, Entry, Hold, IdempotencyKey, Transfer
from storage.retry import is_transient_or_duplicate, with_retries

_T = TypeVar("_T")

_accounts = Account.__table__  # type: ignore[attr-defined]
_transfers = Transfer.__table__  # type: ignore[attr-defined]
_entries = Entry.__table__  # type: ignore[attr-defined]
_holds = Hold.__table__  # type: ignore[attr-defined]
_keys = IdempotencyKey.__table__  # type: ignore[attr-defined]

SCOPE = "ledger"
MAX_ID_LENGTH = 62  # the column holds 64: room for the "x:" of an expiry's id
EXPIRY_PREFIX = "x:"
ATTEMPTS = 12
BACKOFF_BASE_S = 0.005


# ----------------------------------------------------------------- errors


class LedgerError(Exception):
    """A refusal the caller can show or act on; kept with its id, so a retry gets it again."""

    code = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class HoldNotPending(LedgerError):
    """The hold was already posted, voided or expired (I3)."""

    code = "hold_not_pending"


class HoldExpired(LedgerError):
    """Posting after the timeout: the hold is released, nothing is charged (S8)."""

    code = "hold_expired"


class ExceedsHold(LedgerError):
    code = "exceeds_hold"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class UnknownHold(LedgerError):
    code = "unknown_hold"


class IdempotencyConflict(LedgerError):
    """The id was used before with other parameters (I6); never a silent success."""

    code = "idempotency_conflict"


_REFUSALS: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        InsufficientFunds,
        HoldNotPending,
        HoldExpired,
        ExceedsHold,
        UnknownAccount,
        UnknownHold,
    )
}


# ------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class TransferRecord:
    id: str
    kind: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: str | None
    reason: str
    note: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HoldRecord:
    id: str
    account_id: int
    amount: int
    state: str
    timeout_at: datetime
    resolution_id: str | None
    posted_amount: int | None


@dataclass(frozen=True, slots=True)
class Balance:
    """posted: what the user owns; pending: what holds keep aside; available: posted - pending."""

    posted: int
    pending: int

    @property
    def available(self) -> int:
        return self.posted - self.pending


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One transfer as the account saw it: signed posted and pending movements."""

    transfer_id: str
    kind: str
    reason: str
    note: str | None
    posted: int
    pending: int
    at: datetime


# ------------------------------------------------------------------ helpers


def utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


@dataclass(slots=True)
class _Refusal:
    error: LedgerError


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

    # ------------------------------------------------------------ plumbing

    def _checkpoint(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """One transaction, run again from the start on a conflict (never half-applied)."""

        async def once() -> _T:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                async with conn.begin():
                    return await work(conn)

        return await with_retries(
            once, attempts=ATTEMPTS, base_s=BACKOFF_BASE_S, retry_on=is_transient_or_duplicate
        )

    async def _keyed(
        self,
        operation: str,
        key: str,
        params: dict[str, Any],
        work: Callable[[AsyncConnection, datetime], Awaitable[TransferRecord | _Refusal]],
    ) -> TransferRecord:
        """Runs `work` once per key; later calls replay its outcome (I6, I9)."""
        _check_id(key)
        digest = _request_hash(operation, params)

        async def attempt(conn: AsyncConnection) -> TransferRecord | _Refusal:
            found = (
                await conn.execute(
                    select(_keys.c.request_hash, _keys.c.outcome).where(
                        _keys.c.scope == SCOPE, _keys.c.key == key
                    )
                )
            ).first()
            if found is not None:
                if found.request_hash != digest:
                    return _Refusal(
                        IdempotencyConflict(
                            f"id {key!r} was used for another {operation} or other parameters"
                        )
                    )
                return await _replay(conn, found.outcome)
            now = self.clock()
            result = await work(conn, now)
            self._checkpoint(f"{operation}:before_key")
            outcome = (
                {"refused": result.error.code, "message": result.error.message}
                if isinstance(result, _Refusal)
                else {"transfer": result.id}
            )
            await conn.execute(
                insert(_keys).values(
                    scope=SCOPE, key=key, request_hash=digest, outcome=outcome, created_at=now
                )
            )
            return result

        result = await self._transaction(attempt)
        if isinstance(result, _Refusal):
            raise result.error
        return result

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
        """Adds to account totals. With `guard`, that (user) account's update applies only
        if it keeps available >= 0; it goes first, so a refusal has changed nothing.

        Order: the user row first, system rows last. Every transfer touches exactly one user
        account, so this order never deadlocks, and the hot system rows (revenue, top-ups)
        stay locked for the shortest time. The caller names the user row: the order must not
        depend on which system accounts this instance has looked up so far (a fresh Ledger,
        such as a sweeper's, has looked up none and would lock the system row first).
        """
        order = [user, *sorted(account for account in changes if account != user)]
        assert guard is None or guard == user, (guard, user)
        for account_id in order:
            deltas = changes[account_id]
            stmt = (
                update(_accounts)
                .where(_accounts.c.id == account_id)
                .values({col: _accounts.c[col] + delta for col, delta in deltas.items()})
            )
            if account_id == guard:
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
    ) -> _Refusal:
        """Why a guarded move of the user's row (which goes first, so nothing has changed)
        matched no row: the account is missing, or it lacks the money."""
        if not await self._account_exists(conn, account_id):
            return _Refusal(UnknownAccount(f"no account {account_id}"))
        return _Refusal(InsufficientFunds(f"account {account_id} lacks {amount}"))

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
    ) -> TransferRecord:
        """Money in: from system account `source` (topups, bonus, adjustments) to the user."""
        _check_amount(amount)
        params = {"account": account_id, "amount": amount, "source": source, "reason": reason}

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | _Refusal:
            src = await self._system_account(conn, source)
            # The user's row goes first and is the only one that can be missing, so a
            # failed move has changed nothing (one round trip fewer than checking first).
            if not await self._move(
                conn,
                {src: {"debits_posted": amount}, account_id: {"credits_posted": amount}},
                user=account_id,
            ):
                return _Refusal(UnknownAccount(f"no account {account_id}"))
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

        return await self._keyed("credit", transfer_id, params, work)

    async def debit(
        self,
        transfer_id: str,
        account_id: int,
        amount: int,
        *,
        destination: str,
        reason: str,
        note: str | None = None,
    ) -> TransferRecord:
        """Money out of available balance at once (admin debit, refund); never below zero."""
        _check_amount(amount)
        params = {"account": account_id, "amount": amount, "dest": destination, "reason": reason}

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | _Refusal:
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

        return await self._keyed("debit", transfer_id, params, work)

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

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | _Refusal:
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

        return await self._keyed("hold", hold_id, params, work)

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
    ) -> TransferRecord | _Refusal:
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
            return _Refusal(UnknownHold(f"no hold {hold_id!r}"))
        amount = charge if charge is not None else hold.amount
        if amount > hold.amount:
            return _Refusal(ExceedsHold(f"charge {amount} exceeds hold {hold.amount}"))
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
                return _Refusal(HoldNotPending(f"hold {hold_id!r} is already {now_state}"))
            return _Refusal(HoldExpired(f"hold {hold_id!r} timed out at {hold.timeout_at}"))
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

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | _Refusal:
            result = await self._resolve(
                conn, now, transfer_id, hold_id, "posted", amount, require_unexpired=True
            )
            if isinstance(result, _Refusal) and isinstance(result.error, HoldExpired):
                # Release it now rather than leave it to the sweeper; the refusal stands.
                await self._resolve(
                    conn, now, _expiry_id(hold_id), hold_id, "expired", 0, require_unexpired=False
                )
            return result

        return await self._keyed("post", transfer_id, params, work)

    async def void(self, transfer_id: str, hold_id: str) -> TransferRecord:
        """Releases the whole hold."""
        params = {"hold": hold_id}

        async def work(conn: AsyncConnection, now: datetime) -> TransferRecord | _Refusal:
            return await self._resolve(
                conn, now, transfer_id, hold_id, "voided", 0, require_unexpired=False
            )

        return await self._keyed("void", transfer_id, params, work)

    async def expire_due(self, limit: int = 500) -> list[str]:
        """Expires pending holds past their timeout (I8); the sweeper calls this periodically.
        Returns the ids of the holds it expired; one transaction per hold, so one that a
        post or void wins meanwhile is simply skipped."""
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

            async def work(conn: AsyncConnection, hold_id: str = hold_id) -> bool:
                result = await self._resolve(
                    conn, now, _expiry_id(hold_id), hold_id, "expired", 0, require_unexpired=False
                )
                return not isinstance(result, _Refusal)

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
            raise UnknownHold(f"no hold {hold_id!r}")
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


def balance_query(account_id: int) -> Select[Any]:
    """The query `Ledger.balance` runs: the account row by primary key."""
    return select(_accounts).where(_accounts.c.id == account_id)


def statement_query(account_id: int, limit: int = 20, before: int | None = None) -> Select[Any]:
    """The query `Ledger.statement` runs: the account's entries grouped by transfer, the
    transfers with the newest entries first; `before` pages by entry id."""
    e, t = _entries.c, _transfers.c
    last_entry = func.max(e.id).label("last_entry")
    posted = func.sum(case((e.pending.is_(False), e.amount), else_=0)).label("posted")
    pending = func.sum(case((e.pending.is_(True), e.amount), else_=0)).label("pending")
    query = (
        select(t.id, t.kind, t.reason, t.note, t.created_at, posted, pending, last_entry)
        .join(_transfers, t.id == e.transfer_id)
        .where(e.account_id == account_id)
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


async def _replay(conn: AsyncConnection, outcome: dict[str, Any]) -> TransferRecord | _Refusal:
    if "refused" in outcome:
        return _Refusal(_REFUSALS[outcome["refused"]](outcome["message"]))
    row = (
        await conn.execute(select(_transfers).where(_transfers.c.id == outcome["transfer"]))
    ).first()
    assert row is not None, outcome
    data = dict(row._mapping)
    data["created_at"] = utc(data["created_at"])
    return TransferRecord(**data)
