"""Admin commands, for the ids in ADMIN_IDS only.

To anyone else they do not exist: the router's filter lets their messages
fall through to the engine, which answers as it does any unknown command.
Every command an admin runs is written to the audit table with its result.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from flows.generation.service import rub
from flows.payments.service import PaymentsService
from flows.services import Services
from pricing.catalog import rub_to_kopecks
from storage.ledger import LedgerError

Reply = Callable[[Message, str, str], Awaitable[None]]


def admin_router(
    services: Services, payments: PaymentsService, admin_ids: frozenset[int]
) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(admin_ids))
    text = payments.text

    async def reply(message: Message, command: CommandObject, result: str) -> None:
        assert message.from_user is not None
        await payments.store.audit(
            message.from_user.id, command.command, command.args or "", result
        )
        await message.answer(result, parse_mode=None)

    def usage(name: str) -> str:
        return text(f"admin_usage_{name}", "ru")

    @router.message(Command("stats"))
    async def stats(message: Message, command: CommandObject) -> None:
        s = await payments.store.stats()
        jobs = ", ".join(f"{k}: {v}" for k, v in sorted(s["jobs"].items())) or "-"
        await reply(
            message,
            command,
            text("admin_stats", "ru").format(
                users=s["users"], payments=s["payments"], credited=rub(s["credited"]), jobs=jobs
            ),
        )

    @router.message(Command("user"))
    async def user(message: Message, command: CommandObject) -> None:
        try:
            user_id = int((command.args or "").strip())
        except ValueError:
            await reply(message, command, usage("user"))
            return
        account = await services.account(user_id, "ru")
        balance = await services.ledger.balance(account)
        jobs = await services.jobs.recent(user_id, 5)
        await reply(
            message,
            command,
            text("admin_user", "ru").format(
                user=user_id,
                available=rub(balance.available),
                on_hold=rub(balance.pending),
                jobs=", ".join(f"{j.model_id}:{j.state}" for j in jobs) or "-",
            ),
        )

    async def adjust(message: Message, command: CommandObject, sign: int) -> None:
        parts = (command.args or "").split(maxsplit=2)
        try:
            user_id, amount = int(parts[0]), rub_to_kopecks(parts[1])
            reason = parts[2]
        except (IndexError, ValueError, ArithmeticError):
            await reply(message, command, usage(command.command))
            return
        account = await services.account(user_id, "ru")
        op = f"adm:{secrets.token_hex(8)}"
        try:
            if sign > 0:
                await services.ledger.credit(
                    op, account, amount, source="adjustments", reason="admin", note=reason[:200]
                )
            else:
                await services.ledger.debit(
                    op,
                    account,
                    amount,
                    destination="adjustments",
                    reason="admin",
                    note=reason[:200],
                )
        except (LedgerError, ValueError) as exc:
            await reply(message, command, text("admin_refused", "ru").format(reason=exc))
            return
        balance = await services.ledger.balance(account)
        await reply(
            message,
            command,
            text("admin_adjusted", "ru").format(user=user_id, available=rub(balance.available)),
        )

    @router.message(Command("credit"))
    async def credit(message: Message, command: CommandObject) -> None:
        await adjust(message, command, +1)

    @router.message(Command("debit"))
    async def debit(message: Message, command: CommandObject) -> None:
        await adjust(message, command, -1)

    @router.message(Command("refund"))
    async def refund(message: Message, command: CommandObject) -> None:
        charge_id = (command.args or "").strip()
        if not charge_id:
            await reply(message, command, usage("refund"))
            return
        await reply(message, command, text(await payments.refund(charge_id), "ru"))

    @router.message(Command("promo"))
    async def promo(message: Message, command: CommandObject) -> None:
        parts = (command.args or "").split()
        try:
            code, amount, uses = parts[0].upper(), rub_to_kopecks(parts[1]), int(parts[2])
            days = float(parts[3]) if len(parts) > 3 else None
            if not 3 <= len(code) <= 32 or amount <= 0 or uses <= 0:
                raise ValueError(code)
        except (IndexError, ValueError, ArithmeticError):
            await reply(message, command, usage("promo"))
            return
        assert message.from_user is not None
        now = payments.store.clock()
        made = await payments.store.create_promo(
            code=code,
            amount=amount,
            max_uses=uses,
            expires_at=now + timedelta(days=days) if days else None,
            created_by=message.from_user.id,
        )
        key = "admin_promo_made" if made else "admin_promo_exists"
        await reply(message, command, text(key, "ru").format(code=code))

    return router
