"""Flood control sheds navigation only: payments and admin commands always go through
(issue 11, defects 2 and 13), over the real stack on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from flows.payments.settings import PaymentSettings
from tests.harness import Stack, running_stack
from tests.test_payments_e2e import ADMIN, CREDIT, available, invoice, pay, pre_checkout
from tests.test_service_flood import BUSY
from trt.flood import FloodLimits

# Four updates of a burst get through (/start and the three taps to an invoice), then
# the bucket stays empty for the rest of the test.
LIMITS = FloodLimits(rate=0.0001, burst=4, in_flight=100)


@pytest.fixture
async def stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    settings = PaymentSettings(ADMIN_IDS=str(ADMIN))
    async with running_stack(
        db_url=migrated_database_url, payment_settings=settings, flood=LIMITS
    ) as s:
        yield s


async def test_a_payment_from_a_flooding_user_is_credited(stack: Stack) -> None:
    chat = stack.chat(5)
    params = await invoice(chat)  # the burst is spent
    calls = await chat.send("hello")
    assert [c.params["text"] for c in calls if c.method == "sendMessage"] == [BUSY]

    answer = await pre_checkout(stack, 5, params)
    assert answer["ok"] is True
    assert await pay(stack, chat, params, "flood-charge") == 200
    assert await available(stack, 5) == CREDIT


async def test_every_admin_command_of_a_burst_is_applied_and_audited(stack: Stack) -> None:
    await stack.chat(70).send("/start")
    chat = stack.chat(ADMIN)
    for _ in range(12):
        calls = await chat.send("/credit 70 1 burst")
        assert BUSY not in [c.params.get("text") for c in calls]
    assert await available(stack, 70) == 12 * 100
    async with stack.product.services.db.connect() as conn:
        audited = await conn.scalar(
            text("SELECT COUNT(*) FROM admin_audit WHERE command = 'credit'")
        )
    assert audited == 12
