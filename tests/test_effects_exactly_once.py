"""Admin commands, promo codes and unknown payments apply exactly once, whatever fails
after the money moved and however often Telegram delivers the update again (issue 11,
defects 1, 3, 9 and 12), over the real stack on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from flows.payments.settings import PaymentSettings
from tests.harness import Stack, running_stack
from tests.ledger_support import check_invariants
from tests.test_payments_e2e import ADMIN, CREDIT, available, invoice, pay, t
from trt.observability.database import read_facts

Row = tuple[Any, ...]
HUGE = "99999999999999999999"  # beyond a 64-bit id


@pytest.fixture
async def stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    settings = PaymentSettings(ADMIN_IDS=str(ADMIN))
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as s:
        yield s


async def rows(stack: Stack, sql: str) -> list[Row]:
    async with stack.product.services.db.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def execute(stack: Stack, sql: str) -> None:
    async with stack.product.services.db.begin() as conn:
        await conn.execute(text(sql))


def command(stack: Stack, line: str) -> dict[str, Any]:
    return stack.api.make_message_update(ADMIN, ADMIN, line)


def replies(stack: Stack, since: int = 0) -> list[str]:
    return [
        str(c.params["text"])
        for c in stack.api.calls[since:]
        if c.method == "sendMessage" and not c.failed and int(c.params["chat_id"]) == ADMIN
    ]


async def started(stack: Stack, user_id: int) -> None:
    await stack.chat(user_id).send("/start")


# ------------------------------------------------------------------ defect 1


async def test_a_credit_whose_reply_is_lost_applies_once_when_telegram_redelivers(
    stack: Stack,
) -> None:
    """Telegram unreachable while replying: the webhook refuses the update (503), Telegram
    delivers it again, and the second delivery replays the credit instead of repeating it."""
    await started(stack, 41)
    update = command(stack, "/credit 41 25 goodwill")
    stack.api.inject_disconnect("sendMessage")
    assert await stack.post(update) == 503
    assert await available(stack, 41) == 25_00  # applied, though nobody was told

    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    assert await available(stack, 41) == 25_00
    assert replies(stack, before) == [t("admin_adjusted").format(user=41, available="25 ₽")]
    audit = await rows(stack, "SELECT command, args FROM admin_audit")
    assert audit == [("credit", "41 25 goodwill")]
    await check_invariants(stack.product.services.db)


async def test_the_audit_row_commits_with_the_transfer_or_neither_does(stack: Stack) -> None:
    """With the audit table failing, the debit is not applied either. Once it works again,
    the command (redelivered after a 503, or sent again after an apology) applies once,
    with its one audit row."""
    await started(stack, 42)
    await stack.post(command(stack, "/credit 42 10 start"))
    update = command(stack, "/debit 42 1 correction")
    await execute(stack, "ALTER TABLE admin_audit RENAME TO admin_audit_gone")
    try:
        status = await stack.post(update)
        assert await available(stack, 42) == 10_00
    finally:
        await execute(stack, "ALTER TABLE admin_audit_gone RENAME TO admin_audit")
    assert await rows(stack, "SELECT command FROM admin_audit ORDER BY id") == [("credit",)]
    again = update if status == 503 else command(stack, "/debit 42 1 correction")
    assert await stack.post(again) == 200
    assert await stack.post(again) == 200
    assert await available(stack, 42) == 9_00
    audit = await rows(stack, "SELECT command FROM admin_audit ORDER BY id")
    assert audit == [("credit",), ("debit",)]


async def test_the_same_command_delivered_twice_at_once_applies_once(stack: Stack) -> None:
    await started(stack, 43)
    update = command(stack, "/credit 43 7 twice")
    assert await asyncio.gather(stack.post(update), stack.post(update)) == [200, 200]
    assert await available(stack, 43) == 7_00
    assert len(await rows(stack, "SELECT id FROM admin_audit")) == 1


async def test_two_commands_with_the_same_words_are_two_credits(stack: Stack) -> None:
    await started(stack, 44)
    for _ in range(2):
        await stack.post(command(stack, "/credit 44 3 again"))
    assert await available(stack, 44) == 6_00
    assert len(await rows(stack, "SELECT id FROM admin_audit")) == 2


# ------------------------------------------------------------------ defect 9


@pytest.mark.parametrize(
    ("line", "key", "values"),
    [
        ("/credit 7001 1e30 x", "admin_bad_amount", {"value": "1e30"}),
        ("/credit 7001 inf x", "admin_bad_amount", {"value": "inf"}),
        ("/credit 7001 NaN x", "admin_bad_amount", {"value": "NaN"}),
        ("/debit 7001 -5 x", "admin_bad_amount", {"value": "-5"}),
        ("/credit 7001 0 x", "admin_bad_amount", {"value": "0"}),
        (f"/credit {HUGE} 100 x", "admin_bad_user_id", {"value": HUGE}),
        ("/credit -7001 100 x", "admin_bad_user_id", {"value": "-7001"}),
        ("/credit 7002 100 x", "admin_unknown_user", {"user": 7002}),
        (f"/user {HUGE}", "admin_bad_user_id", {"value": HUGE}),
        ("/user -1", "admin_bad_user_id", {"value": "-1"}),
        ("/user 7002", "admin_unknown_user", {"user": 7002}),
        ("/promo X 10 5", "admin_bad_code", {"value": "X"}),
        ("/promo SALE 10 5 inf", "admin_bad_days", {"value": "inf"}),
        ("/promo SALE 10 5 -1", "admin_bad_days", {"value": "-1"}),
        ("/promo SALE 10 5 0", "admin_bad_days", {"value": "0"}),
        ("/promo SALE 10 0", "admin_bad_uses", {"value": "0"}),
        ("/promo SALE 1e30 5", "admin_bad_amount", {"value": "1e30"}),
        ("/credit 7001", "admin_usage_credit", {}),
    ],
)
async def test_out_of_range_arguments_are_refused_specifically_and_audited(
    stack: Stack, line: str, key: str, values: dict[str, Any]
) -> None:
    await started(stack, 7001)
    users = await rows(stack, "SELECT id FROM users ORDER BY id")
    before = len(stack.api.calls)
    assert await stack.post(command(stack, line)) == 200
    expected = t(key).format(**values)
    assert replies(stack, before) == [expected]
    name, _, args = line[1:].partition(" ")
    audit = await rows(stack, "SELECT command, args, result FROM admin_audit")
    assert audit == [(name, args, expected)]
    assert await rows(stack, "SELECT id FROM users ORDER BY id") == users  # none created
    assert await rows(stack, "SELECT code FROM promo_codes") == []
    assert await available(stack, 7001) == 0


# ------------------------------------------------------------------ defect 3


async def test_a_promo_whose_credit_fails_stays_unspent_and_credits_once_later(
    stack: Stack,
) -> None:
    await stack.post(command(stack, "/promo GIFT 30 1"))
    chat = stack.chat(45)
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("🎟 Промокод")
    ledger = stack.product.services.ledger

    def fail(point: str) -> None:
        if point == "credit:before_key":
            raise RuntimeError("the credit fails")

    ledger.fault = fail
    try:
        await chat.send("GIFT")
    finally:
        ledger.fault = None
    assert await available(stack, 45) == 0
    assert await rows(stack, "SELECT used FROM promo_codes") == [(0,)]
    assert await rows(stack, "SELECT user_id FROM promo_redemptions") == []

    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("🎟 Промокод")
    calls = await chat.send("GIFT")
    assert t("promo_ok") in [c.params.get("text") for c in calls]
    assert await available(stack, 45) == 30_00
    assert await rows(stack, "SELECT used FROM promo_codes") == [(1,)]
    await check_invariants(stack.product.services.db)


# ------------------------------------------------------------------ defect 12


async def test_a_payment_for_an_unknown_order_is_kept_announced_and_refundable(
    stack: Stack,
) -> None:
    chat = stack.chat(46)
    await chat.send("/start")
    update = stack.api.make_successful_payment_update(
        46, 46, "no-such-order", "XTR", 100, charge_id="orphan-1"
    )
    assert await stack.post(update) == 200
    assert await stack.post(update) == 200  # redelivered: still one row, one notice
    assert await available(stack, 46) == 0
    payments = await rows(stack, "SELECT charge_id, order_id, user_id, amount FROM payments")
    assert payments == [("orphan-1", None, 46, 100)]
    notices = [r for r in replies(stack) if "orphan-1" in r]
    assert notices == [
        t("admin_orphan_payment").format(charge="orphan-1", user=46, amount=100, currency="XTR")
    ]
    assert (await read_facts(stack.product.services.db)).orphan_payments == 1

    assert replies(stack, len(stack.api.calls) - 0) == []
    before = len(stack.api.calls)
    await stack.post(command(stack, "/refund orphan-1"))
    assert replies(stack, before) == [t("refund_done")]
    refunds = stack.api.calls_of("refundStarPayment")
    assert [c.params["telegram_payment_charge_id"] for c in refunds] == ["orphan-1"]
    assert (await read_facts(stack.product.services.db)).orphan_payments == 0
    await check_invariants(stack.product.services.db)


# ------------------------------------------------------------------ refunds


async def test_a_refund_whose_reply_is_lost_resumes_and_debits_once(stack: Stack) -> None:
    chat = stack.chat(47)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-47")
    update = command(stack, "/refund charge-47")
    stack.api.inject_disconnect("sendMessage")
    assert await stack.post(update) == 503
    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    assert replies(stack, before) == [t("refund_done")]
    assert await available(stack, 47) == 0
    assert await rows(stack, "SELECT COUNT(*) FROM holds WHERE state = 'pending'") == [(0,)]
    assert await stack.post(command(stack, "/refund charge-47")) == 200
    assert replies(stack)[-1] == t("refund_again")
    assert await available(stack, 47) == 0
    assert CREDIT > 0
    await check_invariants(stack.product.services.db)


async def test_a_refund_whose_answer_is_lost_is_finished_by_the_redelivery(
    stack: Stack,
) -> None:
    """Telegram refunded the Stars but its answer never came: the command is refused
    (503), not called failed; its redelivery learns CHARGE_ALREADY_REFUNDED and takes the
    credit back once. Neither the Stars nor the balance are given twice."""
    chat = stack.chat(48)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-48")
    update = command(stack, "/refund charge-48")
    stack.api.inject_lost_answer("refundStarPayment")
    assert await stack.post(update) == 503
    assert "charge-48" in stack.api.refunded
    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    assert replies(stack, before) == [t("refund_done")]
    assert await available(stack, 48) == 0
    assert await rows(stack, "SELECT COUNT(*) FROM holds WHERE state = 'pending'") == [(0,)]
    await check_invariants(stack.product.services.db)


def receipts_sent(stack: Stack) -> int:
    return sum(
        1
        for c in stack.api.calls_of("sendMessage")
        if not c.failed and "Оплата получена" in str(c.params.get("text"))
    )


async def test_a_receipt_telegram_did_not_take_is_sent_on_redelivery(stack: Stack) -> None:
    chat = stack.chat(49)
    params = await invoice(chat)
    update = stack.api.make_successful_payment_update(
        49, 49, params["payload"], "XTR", 100, charge_id="charge-49"
    )
    stack.api.inject_error("sendMessage", 502, "Bad Gateway")
    assert await stack.post(update) == 503
    assert await available(stack, 49) == CREDIT  # credited, the receipt not yet sent
    assert await stack.post(update) == 200
    assert await stack.post(update) == 200
    assert await available(stack, 49) == CREDIT
    assert receipts_sent(stack) == 1


async def test_a_balance_screen_telegram_did_not_take_does_not_repeat_the_receipt(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receipt went out, then the balance screen after it met a 5xx: the update is
    refused, and its redelivery must not send the receipt again (a campaign finding)."""
    chat = stack.chat(50)
    params = await invoice(chat)
    update = stack.api.make_successful_payment_update(
        50, 50, params["payload"], "XTR", 100, charge_id="charge-50"
    )
    screens = stack.product.payments.notifier
    real = screens.push

    async def failing_once(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(screens, "push", real)
        stack.api.inject_error("sendMessage", 502, "Bad Gateway")
        await real(*args, **kwargs)

    monkeypatch.setattr(screens, "push", failing_once)
    assert await stack.post(update) == 503
    assert await stack.post(update) == 200
    assert await available(stack, 50) == CREDIT
    assert receipts_sent(stack) == 1


async def test_the_run_that_redeemed_a_code_is_told_ok_again_others_used(stack: Stack) -> None:
    """A promo step resumed after an outage (the same screen run) learns that its code
    worked; the user typing it again later learns it was used. Credited once."""
    await stack.post(command(stack, "/promo AGAIN 20 5"))
    await started(stack, 50)
    payments = stack.product.payments
    assert await payments.redeem_promo("AGAIN", 50, "ru", "50:50:7") == ("ok", 20_00)
    assert await payments.redeem_promo("AGAIN", 50, "ru", "50:50:7") == ("ok", 20_00)
    assert await payments.redeem_promo("AGAIN", 50, "ru", "50:50:9") == ("used", 0)
    assert await available(stack, 50) == 20_00
    assert await rows(stack, "SELECT used FROM promo_codes") == [(1,)]
