"""What the product's actions need besides the conversation: money, jobs, generation.

Built once per process, complete: the services it holds were built before the
engine, with the engine's Outbox (engine.outbox) for what they show later.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from flows.admin_service import AdminService
from flows.generation.ports import Jobs
from flows.generation.service import GenerationService
from flows.payments.service import PaymentsService
from storage.ledger import Ledger
from storage.users import ensure_user, find_account


@dataclass(frozen=True, slots=True)
class Services:
    db: AsyncEngine
    ledger: Ledger
    jobs: Jobs
    generation: GenerationService
    payments: PaymentsService
    admin: AdminService

    async def account(self, user_id: int, locale: str) -> int:
        """The user's account, created on first use: for writes that need one."""
        return await ensure_user(self.db, user_id, language=locale)

    async def existing_account(self, user_id: int) -> int | None:
        """The user's account if there is one: for screens, which only read (a read that
        wrote would take SQLite's write lock on every render)."""
        return await find_account(self.db, user_id)
