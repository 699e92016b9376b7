"""What the product's actions need besides the conversation: money, jobs, generation.

Built once per process. The generation and payments services need the bot and
the engine (to show a finished job or a receipt), which need the registry,
which needs this: so they are attached after the engine exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from flows.generation.service import GenerationService
from flows.payments.service import PaymentsService
from storage.jobs import JobStore
from storage.ledger import Ledger
from storage.users import ensure_user, find_account


@dataclass
class Services:
    db: AsyncEngine
    ledger: Ledger
    jobs: JobStore
    _generation: GenerationService | None = field(default=None, repr=False)
    _payments: PaymentsService | None = field(default=None, repr=False)

    @classmethod
    def on(cls, db: AsyncEngine) -> Services:
        return cls(db=db, ledger=Ledger(db), jobs=JobStore(db))

    def attach_generation(self, generation: GenerationService) -> None:
        self._generation = generation

    def attach_payments(self, payments: PaymentsService) -> None:
        self._payments = payments

    @property
    def payments(self) -> PaymentsService:
        if self._payments is None:
            raise RuntimeError("the payments service is not attached")
        return self._payments

    @property
    def generation(self) -> GenerationService:
        if self._generation is None:
            raise RuntimeError("the generation service is not attached")
        return self._generation

    async def account(self, user_id: int, locale: str) -> int:
        """The user's account, created on first use: for writes that need one."""
        return await ensure_user(self.db, user_id, language=locale)

    async def existing_account(self, user_id: int) -> int | None:
        """The user's account if there is one: for screens, which only read (a read that
        wrote would take SQLite's write lock on every render)."""
        return await find_account(self.db, user_id)
