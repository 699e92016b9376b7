"""Users, their accounts and the ledger: transfers, entries, holds, idempotency keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlmodel import Field, SQLModel

from storage.models.base import serial_id, utc_column

# Amounts are kopecks in BigInteger columns: integers, never floats. The
# account row carries TigerBeetle's four running totals so that the one rule
# the database must never break (a user's available balance stays >= 0, I2) is
# a CHECK constraint on one row, not a sum over history. Entries are the
# append-only history those totals must always equal (I7).

HOLD_STATES = ("pending", "posted", "voided", "expired")
TRANSFER_KINDS = ("credit", "debit", "hold", "post", "void", "expire")


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    username: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    language: str = Field(sa_column=Column(String(8), nullable=False))
    created_at: datetime = utc_column()
    referrer_id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, ForeignKey("users.id"), nullable=True, index=True),
    )
    is_active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False))


class Account(SQLModel, table=True):
    """A user's balance, or a system account (revenue, top-ups clearing, bonus expense).

    System accounts may go negative: top-ups clearing is where money enters, so
    it sits below zero by exactly what users hold.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (code IS NULL)", name="owner"),
        CheckConstraint("debits_pending >= 0", name="debits_pending"),
        CheckConstraint("debits_posted >= 0", name="debits_posted"),
        CheckConstraint("credits_pending >= 0", name="credits_pending"),
        CheckConstraint("credits_posted >= 0", name="credits_posted"),
        CheckConstraint(
            "allow_negative OR credits_posted - debits_posted - debits_pending >= 0",
            name="available",
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    user_id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, ForeignKey("users.id"), nullable=True, unique=True),
    )
    code: str | None = Field(default=None, sa_column=Column(String(32), nullable=True, unique=True))
    allow_negative: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    debits_pending: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    debits_posted: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    credits_pending: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    credits_posted: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class AccountShard(SQLModel, table=True):
    """Running totals of a system account, spread over rows by the user on the other side.

    Every transfer touches one system account; with its totals on one row, that row's
    lock would queue every writer in the service behind each other's commit. A system
    account's totals are its own row's plus the sum of its shards (rows written before
    shards existed keep their totals). Shards may go negative one by one: only their sum
    means anything, and system accounts may go negative anyway.
    """

    __tablename__ = "account_shards"

    account_id: int = Field(sa_column=Column(Integer, ForeignKey("accounts.id"), primary_key=True))
    shard: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    debits_pending: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    debits_posted: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    credits_pending: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    credits_posted: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class Transfer(SQLModel, table=True):
    """One money movement; its id is the caller's idempotency key (I5).

    `pending_id` links a post, void or expiry to the hold it resolves.
    """

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount"),
        CheckConstraint(f"kind IN {TRANSFER_KINDS!r}", name="kind"),
    )

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    kind: str = Field(sa_column=Column(String(8), nullable=False))
    debit_account_id: int = Field(
        sa_column=Column(Integer, ForeignKey("accounts.id"), nullable=False)
    )
    credit_account_id: int = Field(
        sa_column=Column(Integer, ForeignKey("accounts.id"), nullable=False)
    )
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    pending_id: str | None = Field(
        default=None,
        sa_column=Column(String(64), ForeignKey("transfers.id"), nullable=True, index=True),
    )
    reason: str = Field(sa_column=Column(String(32), nullable=False))
    note: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    created_at: datetime = utc_column()


class Entry(SQLModel, table=True):
    """One side of a transfer: signed (credit +, debit -), pending or posted."""

    __tablename__ = "entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount"),
        Index("ix_entries_account_id_id", "account_id", "id"),
    )

    id: int | None = serial_id()
    transfer_id: str = Field(
        sa_column=Column(String(64), ForeignKey("transfers.id"), nullable=False, index=True)
    )
    account_id: int = Field(sa_column=Column(Integer, ForeignKey("accounts.id"), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    pending: bool = Field(sa_column=Column(Boolean, nullable=False))
    created_at: datetime = utc_column()


class Hold(SQLModel, table=True):
    """A two-phase transfer's pending half; `state` leaves pending exactly once (I3)."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint(f"state IN {HOLD_STATES!r}", name="state"),
        CheckConstraint(
            "posted_amount IS NULL OR (posted_amount >= 0 AND posted_amount <= amount)",
            name="posted_amount",
        ),
        Index("ix_holds_state_timeout_at", "state", "timeout_at"),
    )

    id: str = Field(sa_column=Column(String(64), ForeignKey("transfers.id"), primary_key=True))
    account_id: int = Field(
        sa_column=Column(Integer, ForeignKey("accounts.id"), nullable=False, index=True)
    )
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: str = Field(sa_column=Column(String(8), nullable=False))
    timeout_at: datetime = utc_column()
    resolved_at: datetime | None = utc_column(nullable=True)
    resolution_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    posted_amount: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class IdempotencyKey(SQLModel, table=True):
    """The first outcome of a keyed call, success or refusal, kept so a retry gets it again."""

    __tablename__ = "idempotency_keys"

    scope: str = Field(sa_column=Column(String(16), primary_key=True))
    key: str = Field(sa_column=Column(String(64), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    outcome: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = utc_column()
