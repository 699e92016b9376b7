"""What the ledger returns and refuses, whichever database ran the operation."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

# ----------------------------------------------------------------- errors


class LedgerError(Exception):
    """A refusal the caller can show or act on; kept with its id, so a retry gets it again.

    `text` reads the values the refusing program selected (`storage.ledger_program`)."""

    code = "ledger_error"
    text = "{message}"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"
    text = "account {account} lacks {amount}"


class HoldNotPending(LedgerError):
    """The hold was already posted, voided or expired (I3)."""

    code = "hold_not_pending"
    text = "hold '{hold}' is already {state}"


class HoldExpired(LedgerError):
    """Posting after the timeout: the hold is released, nothing is charged (S8)."""

    code = "hold_expired"
    text = "hold '{hold}' timed out at {timeout_at}"


class ExceedsHold(LedgerError):
    code = "exceeds_hold"
    text = "charge {charge} exceeds hold {amount}"


class UnknownAccount(LedgerError):
    code = "unknown_account"
    text = "no account {account}"


class UnknownHold(LedgerError):
    code = "unknown_hold"
    text = "no hold '{hold}'"


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


_TRANSFER_FIELDS = tuple(field.name for field in fields(TransferRecord))


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


@dataclass(slots=True)
class Refusal:
    """A refusal as a value, so a transaction can commit it with its key before raising."""

    error: LedgerError


def refusal_from(outcome: dict[str, Any]) -> Refusal:
    """A stored or returned refusal ({"refused": code, "values": {...}}) as the error it
    was. Keys stored by earlier releases kept the message itself."""
    error = _REFUSALS[outcome["refused"]]
    if "message" in outcome:
        return Refusal(error(outcome["message"]))
    values = dict(outcome["values"])
    if values.get("timeout_at") is not None:
        values["timeout_at"] = _moment(values["timeout_at"]).isoformat(" ", "microseconds")
    return Refusal(error(error.text.format(**values)))


def outcome_of(result: dict[str, Any], operation: str, key: str) -> TransferRecord | Refusal:
    """What a program's result means for its caller (`storage.ledger_interpreter` gives
    the shapes, which PostgreSQL's functions share)."""
    if "conflict" in result:
        return conflict(key, operation)
    if "replay" in result and "refused" in result["replay"]:
        return refusal_from(result["replay"])
    if "refused" in result:
        return refusal_from(result)
    return transfer_record(result["transfer"])


def _moment(value: datetime | str) -> datetime:
    """A timestamp as SQLite's driver or PostgreSQL's to_jsonb gives it, in UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return utc(moment).astimezone(UTC)


def transfer_record(data: dict[str, Any]) -> TransferRecord:
    """From a transfers row, as SQLAlchemy returns it or as PostgreSQL's to_jsonb writes it
    (which has every column, also any added after this record)."""
    known = {name: data[name] for name in _TRANSFER_FIELDS}
    return TransferRecord(**{**known, "created_at": _moment(data["created_at"])})


def conflict(key: str, operation: str) -> Refusal:
    return Refusal(
        IdempotencyConflict(f"id {key!r} was used for another {operation} or other parameters")
    )
