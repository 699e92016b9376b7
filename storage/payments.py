"""Orders, payments, promo codes and the admin audit: rows, written so races cannot double up.

A payment is keyed by Telegram's charge id, a promo redemption by (code, user),
and a promo's use counter only moves under `used < max_uses`: the database
decides who was first, never a read followed by a write in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import one_statement
from storage.db import insert_if_absent, write_transaction
from storage.models import (
    AdminAudit,
    Job,
    Order,
    Payment,
    PromoCode,
    PromoRedemption,
    User,
    table_of,
)

_orders = table_of(Order)
_payments = table_of(Payment)
_promos = table_of(PromoCode)
_redemptions = table_of(PromoRedemption)
_audit = table_of(AdminAudit)
_users = table_of(User)
_jobs = table_of(Job)


def _utc(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


class PromoRefused(Exception):
    """A promo claim lost inside its credit's transaction, which it rolls back."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status  # "used" or "exhausted"


@dataclass(frozen=True, slots=True)
class OrderRecord:
    id: str
    user_id: int
    package_id: str
    currency: str
    amount: int
    credit: int
    state: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    charge_id: str
    order_id: str | None  # None: an orphan payment (no order of ours), credited nothing
    user_id: int
    currency: str
    amount: int
    credit: int
    refunded_at: datetime | None
    refund_key: str | None
    receipt_at: datetime | None


class PaymentStore:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    # ------------------------------------------------------------ orders and payments

    async def create_order(self, **values: Any) -> OrderRecord:
        """The order `values["id"]`: made now, or as an earlier delivery of the same tap
        made it."""
        row = {"state": "created", "created_at": self.clock(), **values}
        async with write_transaction(self.engine) as conn:
            await conn.execute(insert_if_absent(conn.dialect.name, _orders, ["id"], row))
            found = (await conn.execute(select(_orders).where(_orders.c.id == row["id"]))).one()
        return _order(found._mapping)

    async def order(self, order_id: str) -> OrderRecord | None:
        row = await one_statement.read(self.engine, select(_orders).where(_orders.c.id == order_id))
        return _order(row._mapping) if row is not None else None

    async def record_payment(self, **values: Any) -> tuple[PaymentRecord, bool]:
        """The payment for `values["charge_id"]`: new (True) or already known (False)."""
        row = {"created_at": self.clock(), "refunded_at": None, "receipt_at": None, **values}
        async with write_transaction(self.engine) as conn:
            made = await conn.execute(
                insert_if_absent(conn.dialect.name, _payments, ["charge_id"], row)
            )
            if row["order_id"] is not None:
                await conn.execute(
                    update(_orders).where(_orders.c.id == row["order_id"]).values(state="paid")
                )
            found = (
                await conn.execute(
                    select(_payments).where(_payments.c.charge_id == row["charge_id"])
                )
            ).one()
        return _payment(found._mapping), made.rowcount == 1

    async def payment(self, charge_id: str) -> PaymentRecord | None:
        row = await one_statement.read(
            self.engine, select(_payments).where(_payments.c.charge_id == charge_id)
        )
        return _payment(row._mapping) if row is not None else None

    async def mark_refunded(self, charge_id: str, key: str) -> bool:
        """True for the refund `key` that marks it, also when that same refund asks again
        (a redelivered command resumes); any other refund gets False."""
        async with write_transaction(self.engine) as conn:
            moved = await conn.execute(
                update(_payments)
                .where(
                    _payments.c.charge_id == charge_id,
                    or_(_payments.c.refunded_at.is_(None), _payments.c.refund_key == key),
                )
                .values(refunded_at=self.clock(), refund_key=key)
            )
        return moved.rowcount == 1

    async def mark_receipt_sent(self, charge_id: str) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                update(_payments)
                .where(_payments.c.charge_id == charge_id, _payments.c.receipt_at.is_(None))
                .values(receipt_at=self.clock())
            )

    async def unmark_refunded(self, charge_id: str, key: str) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                update(_payments)
                .where(_payments.c.charge_id == charge_id, _payments.c.refund_key == key)
                .values(refunded_at=None, refund_key=None)
            )

    # ------------------------------------------------------------ promo codes

    async def create_promo(self, **values: Any) -> bool:
        row = {"used": 0, "created_at": self.clock(), **values}
        async with write_transaction(self.engine) as conn:
            made = await conn.execute(insert_if_absent(conn.dialect.name, _promos, ["code"], row))
        return made.rowcount == 1

    async def promo_amount(self, code: str) -> int | None:
        """What the code credits, or None when there is no such code or it has expired."""
        now = self.clock()
        promo = await one_statement.read(self.engine, select(_promos).where(_promos.c.code == code))
        if promo is None or (_utc(promo.expires_at) or now) < now:
            return None
        return int(promo.amount)

    async def redeemed_by(self, code: str, user_id: int) -> str | None:
        """The run key that redeemed `code` for this user ("" for an older row), or None
        when the user has not redeemed it."""
        row = await one_statement.read(
            self.engine,
            select(_redemptions.c.run_key).where(
                _redemptions.c.code == code, _redemptions.c.user_id == user_id
            ),
        )
        return None if row is None else (row.run_key or "")

    def promo_claim(
        self, code: str, user_id: int, run_key: str
    ) -> Callable[[AsyncConnection, Any], Any]:
        """The claim of one use of `code`, to run inside the ledger transaction of the
        credit it pays for: the redemption row (once per user) and the counter (never
        past max_uses) commit with the credit, or `PromoRefused` undoes all three."""

        async def claim(conn: AsyncConnection, _outcome: Any) -> None:
            now = self.clock()
            made = await conn.execute(
                insert_if_absent(
                    conn.dialect.name,
                    _redemptions,
                    ["code", "user_id"],
                    {"code": code, "user_id": user_id, "at": now, "run_key": run_key[:64]},
                )
            )
            if made.rowcount != 1:
                raise PromoRefused("used")
            moved = await conn.execute(
                update(_promos)
                .where(
                    _promos.c.code == code,
                    _promos.c.used < _promos.c.max_uses,
                    or_(_promos.c.expires_at.is_(None), _promos.c.expires_at > now),
                )
                .values(used=_promos.c.used + 1)
            )
            if moved.rowcount != 1:
                raise PromoRefused("exhausted")

        return claim

    # ------------------------------------------------------------ admin

    async def audit(self, row: dict[str, Any]) -> None:
        """Writes an `audit_row` once: a redelivered command finds its row there."""
        async with write_transaction(self.engine) as conn:
            await write_audit(conn, row)

    async def stats(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            users = await conn.scalar(select(func.count()).select_from(_users))
            payments = await conn.scalar(select(func.count()).select_from(_payments))
            credited = await conn.scalar(
                select(func.coalesce(func.sum(_payments.c.credit), 0)).where(
                    _payments.c.refunded_at.is_(None)
                )
            )
            rows = await conn.execute(select(_jobs.c.state, func.count()).group_by(_jobs.c.state))
            jobs = {str(state): int(count) for state, count in rows.all()}
        return {
            "users": int(users or 0),
            "payments": int(payments or 0),
            "credited": int(credited or 0),
            "jobs": jobs,
        }


def audit_row(
    *, key: str, admin_id: int, command: str, args: str, result: str, at: datetime
) -> dict[str, Any]:
    """One admin command as the audit table keeps it (the long parts cut to fit)."""
    return dict(
        effect_key=key[:64],
        admin_id=admin_id,
        command=command[:32],
        args=args[:500],
        result=result[:500],
        at=at,
    )


async def write_audit(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Inside a caller's transaction (the ledger's, for /credit and /debit), so the row
    commits with the money it describes."""
    await conn.execute(insert_if_absent(conn.dialect.name, _audit, ["effect_key"], row))


def _order(row: Any) -> OrderRecord:
    return OrderRecord(
        id=row["id"],
        user_id=row["user_id"],
        package_id=row["package_id"],
        currency=row["currency"],
        amount=row["amount"],
        credit=row["credit"],
        state=row["state"],
        expires_at=_utc(row["expires_at"]) or row["expires_at"],
    )


def _payment(row: Any) -> PaymentRecord:
    return PaymentRecord(
        charge_id=row["charge_id"],
        order_id=row["order_id"],
        user_id=row["user_id"],
        currency=row["currency"],
        amount=row["amount"],
        credit=row["credit"],
        refunded_at=_utc(row["refunded_at"]),
        refund_key=row["refund_key"],
        receipt_at=_utc(row["receipt_at"]),
    )
