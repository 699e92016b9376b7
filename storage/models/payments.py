"""Orders, payments, promo codes and their redemptions, and the admin audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Integer, String
from sqlmodel import Field, SQLModel

from storage.models.base import serial_id, utc_column

ORDER_STATES = ("created", "paid", "expired")


class Order(SQLModel, table=True):
    """One invoice; its id is the invoice payload, so a payment names its order."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(f"state IN {ORDER_STATES!r}", name="state"),
        CheckConstraint("amount > 0 AND credit > 0", name="amounts"),
    )

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    user_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("users.id"), nullable=False, index=True)
    )
    package_id: str = Field(sa_column=Column(String(32), nullable=False))
    currency: str = Field(sa_column=Column(String(8), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))  # Stars, or kopecks
    credit: int = Field(sa_column=Column(BigInteger, nullable=False))  # kopecks to the balance
    state: str = Field(sa_column=Column(String(8), nullable=False))
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()


class Payment(SQLModel, table=True):
    """One successful payment: its Telegram charge id credits exactly once (I5, S9, S12)."""

    __tablename__ = "payments"

    charge_id: str = Field(sa_column=Column(String(128), primary_key=True))
    # None for an orphan: Telegram took the money for an order this bot does not know.
    # It credits nothing (credit 0), and /refund gives the Stars back.
    order_id: str | None = Field(
        default=None,
        sa_column=Column(String(32), ForeignKey("orders.id"), nullable=True, index=True),
    )
    user_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("users.id"), nullable=False, index=True)
    )
    currency: str = Field(sa_column=Column(String(8), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    credit: int = Field(sa_column=Column(BigInteger, nullable=False))
    provider_charge_id: str | None = Field(
        default=None, sa_column=Column(String(128), nullable=True)
    )
    refunded_at: datetime | None = utc_column(nullable=True)
    # The cause of the refund that marked it (the admin's command): a redelivery of that
    # command resumes the refund it started instead of calling it a second refund.
    refund_key: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    # When the user's receipt was sent: until then a redelivered successful_payment
    # sends it (again), so a receipt Telegram did not take is not lost.
    receipt_at: datetime | None = utc_column(nullable=True)
    created_at: datetime = utc_column()


class PromoCode(SQLModel, table=True):
    __tablename__ = "promo_codes"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint("used >= 0 AND used <= max_uses", name="uses"),
    )

    code: str = Field(sa_column=Column(String(32), primary_key=True))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    max_uses: int = Field(sa_column=Column(Integer, nullable=False))
    used: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    expires_at: datetime | None = utc_column(nullable=True)
    created_by: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = utc_column()


class PromoRedemption(SQLModel, table=True):
    """One per user and code: the primary key is the once-per-user rule."""

    __tablename__ = "promo_redemptions"

    code: str = Field(
        sa_column=Column(String(32), ForeignKey("promo_codes.code"), primary_key=True)
    )
    user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("users.id"), primary_key=True))
    at: datetime = utc_column()
    # The screen run that claimed it: that run, resumed after an outage, is told "ok"
    # again; any other attempt by the same user is told "already used".
    run_key: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


class AdminAudit(SQLModel, table=True):
    """Every admin command, its arguments and what came of it, once per command."""

    __tablename__ = "admin_audit"

    id: int | None = serial_id()
    admin_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    command: str = Field(sa_column=Column(String(32), nullable=False))
    args: str = Field(sa_column=Column(String(500), nullable=False))
    result: str = Field(sa_column=Column(String(500), nullable=False))
    at: datetime = utc_column()
    # What caused the row (the admin's chat and message id): one row per command even
    # when Telegram delivers it again. None only for rows older than migration 0006.
    effect_key: str | None = Field(
        default=None, sa_column=Column(String(64), nullable=True, unique=True, index=True)
    )
