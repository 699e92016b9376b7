"""What admin commands may do to money, jobs, promo codes and the audit trail.

The admin handlers (flows.admin) parse and answer; every read and write they
make goes through here, so the stores behind it are not theirs to reach.
Each write is keyed by the command (`key`, from the admin's chat and message
id): a redelivered command replays, never repeats.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flows.generation.ports import Jobs
from flows.payments.service import PaymentsService
from flows.text_keys import RefundResult
from storage.jobs import JobRecord
from storage.ledger import Balance, Ledger, TransferRecord
from storage.ledger_values import Refusal
from storage.payments import PaymentStore, audit_row, write_audit
from storage.users import find_account

# The words an audit row keeps of a transfer, given how it ended.
AuditedBy = Callable[[TransferRecord | Refusal], str]


@dataclass(frozen=True, slots=True)
class Stats:
    users: int
    payments: int
    credited: int
    jobs: dict[str, int]


class AdminService:
    def __init__(
        self,
        *,
        db: AsyncEngine,
        ledger: Ledger,
        jobs: Jobs,
        store: PaymentStore,
        payments: PaymentsService,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._jobs = jobs
        self._store = store
        self._payments = payments

    def now(self) -> datetime:
        return self._store.clock()

    async def stats(self) -> Stats:
        s = await self._store.stats()
        return Stats(
            users=int(s["users"]),
            payments=int(s["payments"]),
            credited=int(s["credited"]),
            jobs=dict(s["jobs"]),
        )

    async def account(self, user_id: int) -> int | None:
        """The user's account, if the user ever came (an admin never creates one)."""
        return await find_account(self._db, user_id)

    async def balance(self, account: int) -> Balance:
        return await self._ledger.balance(account)

    async def recent_jobs(self, user_id: int, limit: int = 5) -> list[JobRecord]:
        return await self._jobs.recent(user_id, limit)

    async def adjust(
        self,
        key: str,
        direction: Literal["credit", "debit"],
        account: int,
        amount: int,
        note: str,
        audit: dict[str, Any],
        result_of: AuditedBy,
    ) -> None:
        """A /credit or /debit under `key`, with its audit row (`audit` plus the result
        `result_of` words) committed in the transfer's own transaction. LedgerError
        when the ledger refuses."""

        async def audited(conn: AsyncConnection, outcome: TransferRecord | Refusal) -> None:
            await write_audit(conn, {**audit, "result": result_of(outcome)[:500]})

        if direction == "credit":
            await self._ledger.credit(
                key, account, amount, source="adjustments", reason="admin", note=note, also=audited
            )
        else:
            await self._ledger.debit(
                key,
                account,
                amount,
                destination="adjustments",
                reason="admin",
                note=note,
                also=audited,
            )

    async def refund(self, charge_id: str, key: str) -> RefundResult:
        return await self._payments.refund(charge_id, key)

    async def create_promo(
        self, *, code: str, amount: int, uses: int, days: float | None, admin_id: int
    ) -> bool:
        """True when made, False when the code exists (a redelivery finds its own)."""
        return await self._store.create_promo(
            code=code,
            amount=amount,
            max_uses=uses,
            expires_at=self.now() + timedelta(days=days) if days else None,
            created_by=admin_id,
        )

    def audit_row(self, *, key: str, admin_id: int, command: str, args: str) -> dict[str, Any]:
        return audit_row(
            key=key, admin_id=admin_id, command=command, args=args, result="", at=self.now()
        )

    def audit(self, row: dict[str, Any]) -> Awaitable[None]:
        """Writes the row once: found already when the transfer wrote it, or on a redelivery."""
        return self._store.audit(row)
