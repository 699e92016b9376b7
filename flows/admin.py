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
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any, Literal

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from flows.admin_service import AdminService
from flows.job_words import status_key
from flows.text_keys import ADMIN_COMMANDS, LEDGER_WORDS
from pricing.catalog import rub_to_kopecks
from pricing.money import rub
from storage.job_states import JobState
from storage.ledger import LedgerError, TransferRecord
from storage.ledger_values import Refusal

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

    def __init__(self, admin: AdminService, text: Callable[[str, str], str]) -> None:
        self.admin = admin
        self.text = text

    def say(self, key: str, **values: Any) -> str:
        """A reply in Telegram HTML, as every text of flows.yaml: values are escaped."""
        return self.text(key, REPLY_LOCALE).format(**{k: escape(str(v)) for k, v in values.items()})

    def status(self, state: JobState | str) -> str:
        """A job's state in words; a state read by name (the stats) is checked here."""
        return self.text(status_key(JobState(state)), REPLY_LOCALE)

    def refusal_words(self, exc: LedgerError) -> str:
        """The ledger's refusal in the reply's language where flows.yaml has words for it,
        else its code."""
        if exc.code in LEDGER_WORDS:
            return self.text(f"ledger_{exc.code}", REPLY_LOCALE)
        return exc.code

    async def known_account(self, user_id: int) -> int:
        account = await self.admin.account(user_id)
        if account is None:
            raise Refused("admin_unknown_user", user=user_id)
        return account

    async def stats(self, command: CommandObject, key: str, admin_id: int) -> str:
        s = await self.admin.stats()
        counts: dict[str, int] = {}
        for state, count in s.jobs.items():
            counts[self.status(state)] = counts.get(self.status(state), 0) + count
        jobs = ", ".join(f"{word}: {n}" for word, n in sorted(counts.items())) or "—"
        return self.say(
            "admin_stats",
            users=s.users,
            payments=s.payments,
            credited=rub(s.credited, REPLY_LOCALE),
            jobs=jobs,
        )

    async def user(self, command: CommandObject, key: str, admin_id: int) -> str:
        (raw,) = arguments(command, 1, "admin_usage_user")
        user_id = parse_user_id(raw.strip())
        balance = await self.admin.balance(await self.known_account(user_id))
        jobs = await self.admin.recent_jobs(user_id)
        return self.say(
            "admin_user",
            user=user_id,
            available=rub(balance.available, REPLY_LOCALE),
            on_hold=rub(balance.pending, REPLY_LOCALE),
            jobs=", ".join(f"{j.model_id}: {self.status(j.state)}" for j in jobs) or "—",
        )

    async def adjust(self, command: CommandObject, key: str, audit: dict[str, Any]) -> str:
        """/credit and /debit: the transfer and its audit row in one transaction."""
        direction: Literal["credit", "debit"] = "credit" if command.command == "credit" else "debit"
        raw_user, raw_amount, reason = arguments(command, 3, f"admin_usage_{direction}")
        user_id, amount = parse_user_id(raw_user), parse_rubles(raw_amount)
        account = await self.known_account(user_id)

        def result_of(outcome: TransferRecord | Refusal) -> str:
            if isinstance(outcome, Refusal):
                return self.say("admin_refused", reason=outcome.error.message)
            return f"{direction} {rub(amount, REPLY_LOCALE)} -> {user_id} ({outcome.id})"

        try:
            await self.admin.adjust(key, direction, account, amount, reason[:200], audit, result_of)
        except LedgerError as exc:
            return self.say("admin_refused", reason=self.refusal_words(exc))
        balance = await self.admin.balance(account)
        return self.say(
            "admin_adjusted", user=user_id, available=rub(balance.available, REPLY_LOCALE)
        )

    async def refund(self, command: CommandObject, key: str, admin_id: int) -> str:
        (charge_id,) = arguments(command, 1, "admin_usage_refund")
        return self.say(await self.admin.refund(charge_id.strip(), key))

    async def promo(self, command: CommandObject, key: str, admin_id: int) -> str:
        parts = (command.args or "").split()
        if not 3 <= len(parts) <= 4:
            raise Refused("admin_usage_promo")
        code, amount, uses = parse_code(parts[0]), parse_rubles(parts[1]), parse_uses(parts[2])
        made = await self.admin.create_promo(
            code=code,
            amount=amount,
            uses=uses,
            days=parse_days(parts[3]) if len(parts) == 4 else None,
            admin_id=admin_id,
        )
        return self.say("admin_promo_made" if made else "admin_promo_exists", code=code)

    def handler(
        self, command: CommandObject, audit: dict[str, Any]
    ) -> Callable[[CommandObject, str, int], Awaitable[str]]:
        if command.command in ("credit", "debit"):
            return lambda c, k, _admin: self.adjust(c, k, audit)
        handlers: dict[str, Callable[[CommandObject, str, int], Awaitable[str]]] = {
            "stats": self.stats,
            "user": self.user,
            "refund": self.refund,
            "promo": self.promo,
        }
        return handlers[command.command]

    async def run(self, command: CommandObject, key: str, admin_id: int) -> str:
        """One command's reply, and its one audit row, whatever happens."""
        audit = self.admin.audit_row(
            key=key, admin_id=admin_id, command=command.command, args=command.args or ""
        )
        try:
            result = await self.handler(command, audit)(command, key, admin_id)
        except Refused as refused:
            result = self.say(refused.key, **refused.values)
        await self.admin.audit({**audit, "result": result[:500]})
        return result


def admin_router(
    admin: AdminService, text: Callable[[str, str], str], admin_ids: frozenset[int]
) -> Router:
    router = Router(name="admin")
    router.message.filter(F.from_user.id.in_(admin_ids))
    commands = AdminCommands(admin, text)

    async def on_command(message: Message, command: CommandObject) -> None:
        assert message.from_user is not None
        key = f"adm:{message.chat.id}:{message.message_id}"
        await message.answer(await commands.run(command, key, message.from_user.id))

    router.message.register(on_command, Command(*ADMIN_COMMANDS))
    return router
