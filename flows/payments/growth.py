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

from storage.ledger import Ledger
from storage.users import ensure_user

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
REF_PREFIX = "ref_"


def referral_code(user_id: int) -> str:
    n, out = user_id, ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if n == 0:
            return out


def parse_referral(start_arg: str) -> int | None:
    if not start_arg.startswith(REF_PREFIX):
        return None
    try:
        return int(start_arg.removeprefix(REF_PREFIX), 36)
    except ValueError:
        return None


def referral_link(bot_username: str, user_id: int) -> str:
    return f"https://t.me/{bot_username}?start={REF_PREFIX}{referral_code(user_id)}"


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
