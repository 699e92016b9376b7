"""Admin commands, for the ids in ADMIN_IDS only.

To anyone else they do not exist: the router's filter lets their messages
fall through to the engine, which answers as it does any unknown command.

Exactly once (docs/MONEY.md): every command is keyed by what caused it, the
admin's chat and message id, never by chance. That key is the ledger id of a
/credit or /debit and the audit row's key, and the audit row commits in the
transfer's own transaction; so when Telegram delivers a command again (the
reply failed, the process died) the transfer replays, the audit row is found,
and the admin gets the same answer without a second credit. Every command,
accepted or refused, leaves exactly one audit row; a refusal says what was
wrong with which argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from flows.job_words import status_key
from flows.payments.service import PaymentsService
from flows.services import Services
from pricing.catalog import rub_to_kopecks
from pricing.money import rub
from storage.ledger import LedgerError, TransferRecord
from storage.ledger_values import Refusal
from storage.payments import audit_row, write_audit
from storage.users import find_account

# Telegram user ids are positive and fit in 64 bits (the users table's BIGINT).
MAX_USER_ID = 2**63 - 1
# Larger amounts are typos, not adjustments: a million rubles.
MAX_RUB = Decimal(1_000_000)
MAX_USES = 1_000_000
MAX_DAYS = 3650.0
PROMO_CODE_LENGTH = (3, 32)


class Refused(Exception):
    """A command refused before it did anything; carries the text key of the reason."""

    def __init__(self, key: str, **values: Any) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


def parse_whole(raw: str, low: int, high: int, refusal: str) -> int:
    """A whole number in [low, high], or the refusal `refusal` naming what was given."""
    try:
        value = int(raw)
    except ValueError:
        raise Refused(refusal, value=raw[:40]) from None
    if not low <= value <= high:
        raise Refused(refusal, value=raw[:40])
    return value


def parse_user_id(raw: str) -> int:
    return parse_whole(raw, 1, MAX_USER_ID, "admin_bad_user_id")


def parse_rubles(raw: str) -> int:
    """Kopecks of a positive, finite ruble amount of at most MAX_RUB."""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise Refused("admin_bad_amount", value=raw[:40]) from None
    if not value.is_finite() or not 0 < value <= MAX_RUB:
        raise Refused("admin_bad_amount", value=raw[:40])
    return rub_to_kopecks(raw)


def parse_uses(raw: str) -> int:
    return parse_whole(raw, 1, MAX_USES, "admin_bad_uses")


def parse_days(raw: str) -> float:
    try:
        days = float(raw)
    except ValueError:
        raise Refused("admin_bad_days", value=raw[:40]) from None
    if not math.isfinite(days) or not 0 < days <= MAX_DAYS:
        raise Refused("admin_bad_days", value=raw[:40])
    return days


def parse_code(raw: str) -> str:
    code = raw.upper()
    low, high = PROMO_CODE_LENGTH
    if not low <= len(code) <= high or not code.replace("_", "").replace("-", "").isalnum():
        raise Refused("admin_bad_code", value=raw[:40])
    return code


def arguments(command: CommandObject, count: int, usage: str) -> list[str]:
    """The first `count` words of the arguments (the last one takes the rest)."""
    parts = (command.args or "").split(maxsplit=count - 1)
    if len(parts) < count:
        raise Refused(usage)
    return parts


# Admin replies are in Russian, the operators' language.
REPLY_LOCALE = "ru"


class AdminCommands:
    """The commands' logic, one small method each; the router only dispatches."""

    def __init__(self, services: Services, payments: PaymentsService) -> None:
        self.services = services
        self.payments = payments
        self.text: Callable[[str, str], str] = payments.text

    def say(self, key: str, **values: Any) -> str:
        """A reply in Telegram HTML, as every text of flows.yaml: values are escaped."""
        return self.text(key, REPLY_LOCALE).format(**{k: escape(str(v)) for k, v in values.items()})

    def refusal_words(self, exc: LedgerError) -> str:
        """The ledger's refusal in the reply's language where flows.yaml has words for it
        (`ledger_insufficient_funds`), else its code."""
        key = f"ledger_{exc.code}"
        words = self.text(key, REPLY_LOCALE)
        return exc.code if words == key else words

    async def stats(self, _command: CommandObject, _key: str) -> str:
        s = await self.payments.store.stats()
        counts: dict[str, int] = {}
        for state, count in s["jobs"].items():
            word = self.text(status_key(state), REPLY_LOCALE)
            counts[word] = counts.get(word, 0) + count
        jobs = ", ".join(f"{word}: {n}" for word, n in sorted(counts.items())) or "—"
        return self.say(
            "admin_stats",
            users=s["users"],
            payments=s["payments"],
            credited=rub(s["credited"], REPLY_LOCALE),
            jobs=jobs,
        )

    async def known_account(self, user_id: int) -> int:
        account = await find_account(self.services.db, user_id)
        if account is None:
            raise Refused("admin_unknown_user", user=user_id)
        return account

    async def user(self, command: CommandObject, _key: str) -> str:
        (raw,) = arguments(command, 1, "admin_usage_user")
        user_id = parse_user_id(raw.strip())
        balance = await self.services.ledger.balance(await self.known_account(user_id))
        jobs = await self.services.jobs.recent(user_id, 5)
        return self.say(
            "admin_user",
            user=user_id,
            available=rub(balance.available, REPLY_LOCALE),
            on_hold=rub(balance.pending, REPLY_LOCALE),
            jobs=", ".join(
                f"{j.model_id}: {self.text(status_key(j.state), REPLY_LOCALE)}" for j in jobs
            )
            or "—",
        )

    async def adjust(self, command: CommandObject, key: str, audit: dict[str, Any]) -> str:
        """/credit and /debit: the transfer and its audit row in one transaction."""
        raw_user, raw_amount, reason = arguments(command, 3, f"admin_usage_{command.command}")
        user_id, amount = parse_user_id(raw_user), parse_rubles(raw_amount)
        account = await self.known_account(user_id)

        async def audited(conn: AsyncConnection, outcome: TransferRecord | Refusal) -> None:
            result = (
                self.say("admin_refused", reason=outcome.error.message)
                if isinstance(outcome, Refusal)
                else f"{command.command} {rub(amount, REPLY_LOCALE)} -> {user_id} ({outcome.id})"
            )
            await write_audit(conn, {**audit, "result": result[:500]})

        ledger = self.services.ledger
        note = reason[:200]
        try:
            if command.command == "credit":
                await ledger.credit(
                    key,
                    account,
                    amount,
                    source="adjustments",
                    reason="admin",
                    note=note,
                    also=audited,
                )
            else:
                await ledger.debit(
                    key,
                    account,
                    amount,
                    destination="adjustments",
                    reason="admin",
                    note=note,
                    also=audited,
                )
        except LedgerError as exc:
            return self.say("admin_refused", reason=self.refusal_words(exc))
        balance = await ledger.balance(account)
        return self.say(
            "admin_adjusted", user=user_id, available=rub(balance.available, REPLY_LOCALE)
        )

    async def refund(self, command: CommandObject, key: str) -> str:
        (charge_id,) = arguments(command, 1, "admin_usage_refund")
        return self.say(await self.payments.refund(charge_id.strip(), key))

    async def promo(self, command: CommandObject, _key: str, admin_id: int) -> str:
        parts = (command.args or "").split()
        if not 3 <= len(parts) <= 4:
            raise Refused("admin_usage_promo")
        code, amount, uses = parse_code(parts[0]), parse_rubles(parts[1]), parse_uses(parts[2])
        days = parse_days(parts[3]) if len(parts) == 4 else None
        store = self.payments.store
        made = await store.create_promo(
            code=code,
            amount=amount,
            max_uses=uses,
            expires_at=store.clock() + timedelta(days=days) if days else None,
            created_by=admin_id,
        )
        return self.say("admin_promo_made" if made else "admin_promo_exists", code=code)


def admin_router(
    services: Services, payments: PaymentsService, admin_ids: frozenset[int]
) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(admin_ids))
    commands = AdminCommands(services, payments)

    async def run(message: Message, command: CommandObject) -> None:
        """Runs one command: the answer, and its one audit row, whatever happens."""
        assert message.from_user is not None
        key = f"adm:{message.chat.id}:{message.message_id}"
        audit = audit_row(
            key=key,
            admin_id=message.from_user.id,
            command=command.command,
            args=command.args or "",
            result="",
            at=payments.store.clock(),
        )
        try:
            match command.command:
                case "credit" | "debit":
                    result = await commands.adjust(command, key, audit)
                case "promo":
                    result = await commands.promo(command, key, message.from_user.id)
                case "stats":
                    result = await commands.stats(command, key)
                case "user":
                    result = await commands.user(command, key)
                case _:
                    result = await commands.refund(command, key)
        except Refused as refused:
            result = commands.say(refused.key, **refused.values)
        # Found already when the command's transfer wrote it, or on a redelivery.
        await payments.store.audit({**audit, "result": result[:500]})
        await message.answer(result)

    router.message.register(run, Command("stats", "user", "credit", "debit", "refund", "promo"))
    return router
