"""First contact: the user row, the referrer from a `/start ref_<code>` link, the welcome bonus.

Runs as an outer middleware on messages, before the engine shows the main
menu, so the balance the first screen shows already has the bonus. Both the
user row and the bonus are idempotent (insert-if-absent, a ledger id per
user), so a repeated /start changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from flows.payments.referral import parse_referral
from storage.ledger import Ledger
from storage.users import ensure_user


class FirstContact(BaseMiddleware):
    def __init__(self, ledger: Ledger, welcome_bonus: int) -> None:
        self.ledger = ledger
        self.welcome_bonus = welcome_bonus

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if (
            isinstance(event, Message)
            and event.from_user
            and (event.text or "").startswith("/start")
        ):
            user = event.from_user
            arg = (event.text or "").partition(" ")[2].strip()
            account = await ensure_user(
                self.ledger.engine,
                user.id,
                language=(user.language_code or "ru")[:8],
                username=user.username,
                referrer_id=parse_referral(arg),
            )
            if self.welcome_bonus > 0:
                await self.ledger.credit(
                    f"welcome:{user.id}",
                    account,
                    self.welcome_bonus,
                    source="bonus",
                    reason="welcome",
                )
        return await handler(event, data)
