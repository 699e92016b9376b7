"""Every write takes the writer discipline and reads never write (issue 11, defect 6):
concurrent first contacts on the embedded SQLite database are served, not answered 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event

from engine.registry import Context
from flows.payments.referral import referral_code
from flows.payments.settings import PaymentSettings
from storage.one_statement import statement_engines
from tests.harness import Stack, running_stack

NEWCOMERS = 24
REGULARS = 6


@pytest.fixture
async def stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    settings = PaymentSettings(WELCOME_BONUS_RUB="10", REFERRAL_BONUS_RUB="5")
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as s:
        yield s


async def test_concurrent_first_contacts_with_referrals_are_all_served(stack: Stack) -> None:
    """Newcomers arriving by a referral link at once, while regulars tap around: every
    update is acknowledged (no "database is locked" turned into 503)."""
    referrer = stack.chat(900)
    await referrer.send("/start")
    regulars = [stack.chat(800 + i) for i in range(REGULARS)]
    for chat in regulars:
        await chat.send("/start")

    async def newcomer(user_id: int) -> int:
        update = stack.api.make_message_update(user_id, user_id, f"/start ref_{referral_code(900)}")
        return await stack.post(update)

    async def regular(chat: Any) -> int:
        update = stack.api.make_callback_update(
            chat.chat_id, chat.chat_id, chat.screen_message, chat.screen().data_of("💰 Баланс")
        )
        return await stack.post(update)

    statuses = await asyncio.gather(
        *(newcomer(1000 + i) for i in range(NEWCOMERS)), *(regular(c) for c in regulars)
    )
    assert statuses == [200] * (NEWCOMERS + REGULARS)
    services = stack.product.services
    for i in range(NEWCOMERS):
        account = await services.existing_account(1000 + i)
        assert account is not None
        assert (await services.ledger.balance(account)).available == 10_00


async def test_the_balance_screen_only_reads(stack: Stack) -> None:
    chat = stack.chat(901)
    await chat.send("/start")
    written: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        verb = words[0].upper()
        # A DEFERRED begin (SQLite's read transaction) takes no lock; IMMEDIATE is a writer.
        if verb in ("INSERT", "UPDATE", "DELETE") or words[-1].upper() == "IMMEDIATE":
            written.append(statement)

    providers = stack.engine.registry.data_providers
    engines = statement_engines(stack.product.services.db)
    for sync_engine in engines:
        event.listen(sync_engine, "before_cursor_execute", record)
    try:
        for user_id, shown in ((901, "10 ₽"), (902, "0 ₽")):  # one known, one never seen
            ctx = Context(
                bot=stack.product.bot,
                user_id=user_id,
                chat_id=user_id,
                locale="ru",
                state="balance",
                data={},
            )
            info = await providers["balance_info"](ctx)
            assert info["balance"] == shown
            await providers["referral_info"](ctx)
    finally:
        for sync_engine in engines:
            event.remove(sync_engine, "before_cursor_execute", record)
    assert written == []
    assert await stack.product.services.existing_account(902) is None
