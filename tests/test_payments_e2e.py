"""Top-ups, refunds, promo codes, referrals and admin commands through the real stack
(webhook, fake Telegram over HTTP, real ledger), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from engine.loader import load_flow
from engine.local.bot_api_server import FakeBotAPI
from flows.payments.referral import referral_code
from flows.payments.settings import PaymentSettings
from tests.harness import ROOT, Chat, Stack, answer_text, running_stack
from tests.ledger_support import check_invariants

RU = load_flow(ROOT / "flows.yaml").spec
ADMIN = 777
PACKAGE = "150 ₽ за 100 ⭐"  # s100: 100 Stars -> 150 RUB
CREDIT = 150_00


@pytest.fixture
async def stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    settings = PaymentSettings(ADMIN_IDS=str(ADMIN), REFERRAL_BONUS_RUB="50")
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as s:
        yield s


def t(key: str) -> str:
    return RU.texts[key]["ru"]


async def available(stack: Stack, user_id: int) -> int:
    services = stack.product.services
    return (await services.ledger.balance(await services.account(user_id, "ru"))).available


async def invoice(chat: Chat) -> dict[str, Any]:
    """Balance -> Top up -> package: the invoice Telegram was asked to show."""
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("💳 Пополнить")
    calls = await chat.tap(PACKAGE)
    assert answer_text(calls) == t("invoice_sent")
    sent = [c for c in calls if c.method == "sendInvoice"]
    assert len(sent) == 1
    return sent[0].params


async def pre_checkout(stack: Stack, user_id: int, params: dict[str, Any], **over: Any) -> Any:
    values = {"payload": params["payload"], "currency": params["currency"]}
    values["total_amount"] = sum(int(p["amount"]) for p in params["prices"])
    values.update(over)
    update = stack.api.make_pre_checkout_update(user_id, **values)
    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    answers = [c for c in stack.api.calls[before:] if c.method == "answerPreCheckoutQuery"]
    assert len(answers) == 1
    return answers[0].params


async def pay(stack: Stack, chat: Chat, params: dict[str, Any], charge: str) -> int:
    update = stack.api.make_successful_payment_update(
        chat.chat_id,
        chat.chat_id,
        params["payload"],
        params["currency"],
        sum(int(p["amount"]) for p in params["prices"]),
        charge_id=charge,
    )
    return await stack.post(update)


async def admin(stack: Stack, command: str, user_id: int = ADMIN) -> str:
    chat = stack.chat(user_id)
    before = len(stack.api.calls)
    await chat.send(command)
    sent = [c for c in stack.api.calls[before:] if c.method == "sendMessage"]
    assert sent, command
    return str(sent[-1].params["text"])


# ------------------------------------------------------------------ top-ups


async def test_invoice_to_credit_receipt_and_balance(stack: Stack) -> None:
    chat = stack.chat(1)
    params = await invoice(chat)
    assert (params["currency"], params["prices"][0]["amount"]) == ("XTR", 100)
    assert params.get("provider_token") in ("", None)  # Stars need no provider
    answer = await pre_checkout(stack, 1, params)
    assert answer["ok"] is True
    assert await available(stack, 1) == 0  # pre-checkout credits nothing (S13)
    assert await pay(stack, chat, params, "charge-1") == 200
    assert await available(stack, 1) == CREDIT
    receipts = [c for c in stack.api.calls_of("sendMessage") if "Оплата получена" in str(c.params)]
    assert len(receipts) == 1 and "150 ₽" in receipts[0].params["text"]
    assert chat.screen().text.startswith("Баланс")
    assert "пополнение" in chat.screen().text
    await check_invariants(stack.product.services.db)


async def test_an_invoice_redelivered_after_telegram_failed_is_the_same_order(
    stack: Stack,
) -> None:
    """The invoice could not be sent (Telegram 5xx): the update is refused, and its
    redelivery sends an invoice for the same order (its id comes from the tap's run
    key), not a second order."""
    chat = stack.chat(9)
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("💳 Пополнить")
    assert chat.screen_message is not None
    update = stack.api.make_callback_update(
        9, 9, chat.screen_message, chat.screen().data_of(PACKAGE), language_code="ru"
    )
    stack.api.inject_error("sendInvoice", 502, "Bad Gateway")
    assert await stack.post(update) == 503
    assert await stack.post(update) == 200
    sent = [c for c in stack.api.calls_of("sendInvoice") if int(c.params["chat_id"]) == 9]
    assert [c.failed for c in sent] == [True, False]
    assert sent[0].params["payload"] == sent[1].params["payload"]
    async with stack.product.services.db.connect() as conn:
        orders = (await conn.execute(text("SELECT id FROM orders WHERE user_id = 9"))).all()
    assert [o.id for o in orders] == [sent[1].params["payload"]]


async def test_the_same_successful_payment_twice_credits_once(stack: Stack) -> None:
    chat = stack.chat(2)
    params = await invoice(chat)
    await pre_checkout(stack, 2, params)
    update = stack.api.make_successful_payment_update(
        2, 2, params["payload"], "XTR", 100, charge_id="charge-2"
    )
    statuses = await asyncio.gather(stack.post(update), stack.post(update))
    assert statuses == [200, 200]
    assert await stack.post(update) == 200
    assert await available(stack, 2) == CREDIT
    async with stack.product.services.db.connect() as conn:
        count = await conn.scalar(text("SELECT COUNT(*) FROM payments WHERE user_id = 2"))
    assert count == 1


async def test_one_invoice_paid_twice_credits_each_charge_once(stack: Stack) -> None:
    """S12: two charges for one invoice are two payments; each credits exactly once."""
    chat = stack.chat(3)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-3a")
    await pay(stack, chat, params, "charge-3b")
    await pay(stack, chat, params, "charge-3a")
    assert await available(stack, 3) == 2 * CREDIT


async def test_pre_checkout_refuses_wrong_amount_foreign_order_and_unknown_payload(
    stack: Stack,
) -> None:
    chat = stack.chat(4)
    params = await invoice(chat)
    wrong = await pre_checkout(stack, 4, params, total_amount=1)
    assert wrong["ok"] is False and wrong["error_message"] == t("pay_wrong_amount")
    currency = await pre_checkout(stack, 4, params, currency="RUB")
    assert currency["ok"] is False
    foreign = await pre_checkout(stack, 5, params)
    assert foreign["ok"] is False and foreign["error_message"] == t("pay_unknown_order")
    unknown = await pre_checkout(stack, 4, params, payload="nope")
    assert unknown["ok"] is False
    assert await available(stack, 4) == 0


async def test_a_slow_pre_checkout_is_refused_in_time(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S13: Telegram waits 10 s; a check slower than the budget is refused, not left hanging."""
    settings = PaymentSettings(PRE_CHECKOUT_BUDGET_S="0.3")
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as stack:
        chat = stack.chat(5)
        params = await invoice(chat)
        real = stack.product.payments.check

        async def slow(*args: Any) -> str | None:
            await asyncio.sleep(2)
            return await real(*args)

        monkeypatch.setattr(stack.product.payments, "check", slow)
        started = asyncio.get_running_loop().time()
        answer = await pre_checkout(stack, 5, params)
        assert answer["ok"] is False and answer["error_message"] == t("pay_slow")
        assert asyncio.get_running_loop().time() - started < 2  # answered before the check ended
        assert await available(stack, 5) == 0


async def test_an_expired_order_is_refused_at_pre_checkout(stack: Stack) -> None:
    chat = stack.chat(6)
    params = await invoice(chat)
    async with stack.product.services.db.begin() as conn:
        await conn.execute(text("UPDATE orders SET expires_at = created_at"))
    answer = await pre_checkout(stack, 6, params)
    assert answer["ok"] is False and answer["error_message"] == t("pay_expired")


# ------------------------------------------------------------------ refunds


async def test_refund_and_a_repeated_refund(stack: Stack) -> None:
    chat = stack.chat(7)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-7")
    assert await admin(stack, "/refund charge-7") == t("refund_done")
    assert await available(stack, 7) == 0
    refunds = stack.api.calls_of("refundStarPayment")
    assert len(refunds) == 1 and refunds[0].params["telegram_payment_charge_id"] == "charge-7"
    assert await admin(stack, "/refund charge-7") == t("refund_again")
    assert len(stack.api.calls_of("refundStarPayment")) == 1
    assert await available(stack, 7) == 0
    await check_invariants(stack.product.services.db)


async def test_a_refund_after_the_money_was_spent_is_refused(stack: Stack) -> None:
    """S14: the policy is to refuse; the balance never goes negative, nothing changes."""
    chat = stack.chat(8)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-8")
    services = stack.product.services
    account = await services.account(8, "ru")
    await services.ledger.debit("spent-8", account, 100_00, destination="revenue", reason="t")
    assert await admin(stack, "/refund charge-8") == t("refund_spent")
    assert stack.api.calls_of("refundStarPayment") == []
    assert await available(stack, 8) == CREDIT - 100_00
    # Still refundable later, once the money is back.
    await services.ledger.credit("back-8", account, 100_00, source="adjustments", reason="t")
    assert await admin(stack, "/refund charge-8") == t("refund_done")


async def test_a_refund_telegram_refuses_changes_nothing(stack: Stack) -> None:
    chat = stack.chat(9)
    params = await invoice(chat)
    await pay(stack, chat, params, "charge-9")
    stack.api.inject_error("refundStarPayment", 400, "Bad Request: CHARGE_NOT_FOUND")
    assert await admin(stack, "/refund charge-9") == t("refund_failed")
    assert await available(stack, 9) == CREDIT
    assert await admin(stack, "/refund charge-9") == t("refund_done")
    assert await available(stack, 9) == 0


# ------------------------------------------------------------------ growth


async def test_promo_codes(stack: Stack) -> None:
    assert await admin(stack, "/promo SPRING 100 1") == t("admin_promo_made").format(code="SPRING")
    chat = stack.chat(10)
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("🎟 Промокод")
    await chat.send("nope-code")
    assert chat.screen().text == RU.states["promo"].text["ru"]
    await chat.send("spring")
    assert chat.screen().text.startswith("Баланс")
    assert await available(stack, 10) == 100_00
    await chat.tap("🎟 Промокод")
    before = len(stack.api.calls)
    await chat.send("SPRING")
    assert any(t("promo_used") == c.params.get("text") for c in stack.api.calls[before:])
    other = stack.chat(11)
    await other.send("/start")
    await other.tap("💰 Баланс")
    await other.tap("🎟 Промокод")
    before = len(stack.api.calls)
    await other.send("SPRING")
    assert any(t("promo_exhausted") == c.params.get("text") for c in stack.api.calls[before:])
    assert await available(stack, 11) == 0


async def test_two_users_race_for_the_last_use_of_a_code(stack: Stack) -> None:
    await admin(stack, "/promo LAST 50 1")
    payments = stack.product.payments
    for user in (12, 13):
        await stack.product.services.account(user, "ru")
    tries = [(u, f"run-{i}") for i, u in enumerate((12, 13) * 3)]
    results = await asyncio.gather(*(payments.redeem_promo("LAST", u, "ru", k) for u, k in tries))
    winners = {u for u, r in zip((12, 13) * 3, results, strict=True) if r[0] == "ok"}
    assert len(winners) == 1
    assert await available(stack, 12) + await available(stack, 13) == 50_00


async def test_referral_bonus_once_on_the_first_paid_top_up(stack: Stack) -> None:
    referrer = stack.chat(20)
    await referrer.send("/start")
    await referrer.tap("🤝 Пригласить друга")
    assert f"start=ref_{referral_code(20)}" in referrer.screen().text
    friend = stack.chat(21)
    await friend.send(f"/start ref_{referral_code(20)}")
    params = await invoice(friend)
    await pay(stack, friend, params, "charge-21a")
    await pay(stack, friend, params, "charge-21b")
    assert await available(stack, 20) == 50_00
    await referrer.send("/start")
    await referrer.tap("🤝 Пригласить друга")
    assert "Заработано: 50 ₽" in referrer.screen().text


async def test_no_self_referral_and_the_first_referrer_stays(stack: Stack) -> None:
    me = stack.chat(30)
    await me.send(f"/start ref_{referral_code(30)}")
    params = await invoice(me)
    await pay(stack, me, params, "charge-30")
    assert await available(stack, 30) == CREDIT
    later = stack.chat(31)
    await later.send("/start")
    await later.send(f"/start ref_{referral_code(30)}")  # not a first contact any more
    params = await invoice(later)
    await pay(stack, later, params, "charge-31")
    assert await available(stack, 30) == CREDIT


async def test_welcome_bonus_once(migrated_database_url: str) -> None:
    settings = PaymentSettings(WELCOME_BONUS_RUB="25")
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as stack:
        chat = stack.chat(40)
        await chat.send("/start")
        await chat.send("/start")
        assert await available(stack, 40) == 25_00


# ------------------------------------------------------------------ admin


async def test_admin_commands_and_audit(stack: Stack) -> None:
    assert (await admin(stack, "/stats")).startswith("Пользователи:")
    await stack.chat(50).send("/start")
    assert "Доступно: 0 ₽" in await admin(stack, "/user 50")
    assert "Баланс 50: 12,50 ₽" in await admin(stack, "/credit 50 12.50 goodwill")
    assert "Баланс 50: 2,50 ₽" in await admin(stack, "/debit 50 10 correction")
    refused = await admin(stack, "/debit 50 100 too much")
    assert refused == "Отклонено: на балансе недостаточно средств"
    assert await admin(stack, "/credit 50") == t("admin_usage_credit")
    async with stack.product.services.db.connect() as conn:
        rows = (await conn.execute(text("SELECT command FROM admin_audit ORDER BY id"))).all()
    assert [r[0] for r in rows] == ["stats", "user", "credit", "debit", "debit", "credit"]


async def test_admin_replies_in_russian_say_no_english_words(stack: Stack) -> None:
    """Job states in the reply's words, amounts with a decimal comma; only ids stay."""
    await stack.chat(51).send("/start")
    jobs = stack.jobs
    for n, final in enumerate(["rejected", None]):
        job, _ = await jobs.create(
            id=f"job{n}", key=f"k{n}", user_id=51, chat_id=51, locale="ru",
            model_id="z-image", kie_model="z-image", kind="free", request={}, price=0,
            callback_secret="s", deadline_at=datetime.now(UTC), hold_id=None,
            # Not due: the poller would fail the unfinished one while the admin asks.
            next_check_at=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip
        if final:
            await jobs.move(job.id, ["created"], final)
    await admin(stack, "/credit 51 0.5 gift")
    for reply in (await admin(stack, "/stats"), await admin(stack, "/user 51")):
        words = re.findall(r"[A-Za-z][A-Za-z_-]+", reply)
        assert set(words) <= {"z-image"}, reply
    assert "Задачи: в работе: 1, отклонено: 1" in await admin(stack, "/stats")
    assert "Доступно: 0,50 ₽" in await admin(stack, "/user 51")


async def test_admin_commands_do_not_exist_for_others(stack: Stack) -> None:
    stranger = await admin(stack, "/stats", user_id=60)
    unknown = await admin(stack, "/no_such_command", user_id=60)
    hint = RU.system.unexpected_input["ru"]
    assert stranger.startswith(hint) and unknown.startswith(hint)
    assert await admin(stack, "/credit 60 1000 me", user_id=60) == stranger
    assert await available(stack, 60) == 0
    async with stack.product.services.db.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM admin_audit")) == 0


async def test_rub_packages_need_a_provider_token(migrated_database_url: str) -> None:
    settings = PaymentSettings(PAYMENT_PROVIDER_TOKEN="provider:test", ADMIN_IDS=str(ADMIN))
    # One Telegram for both deployments: update ids are unique per bot, not per process.
    async with FakeBotAPI() as api:
        async with running_stack(
            db_url=migrated_database_url, payment_settings=settings, api=api
        ) as stack:
            chat = stack.chat(70)
            await chat.send("/start")
            await chat.tap("💰 Баланс")
            await chat.tap("💳 Пополнить")
            labels = [label for label, _ in chat.screen().flat()]
            assert "300 ₽ картой" in labels and PACKAGE in labels
            calls = await chat.tap("300 ₽ картой")
            sent = next(c for c in calls if c.method == "sendInvoice")
            assert (sent.params["currency"], sent.params["provider_token"]) == (
                "RUB",
                "provider:test",
            )
            assert sent.params["prices"][0]["amount"] == 300_00
            assert (await pre_checkout(stack, 70, sent.params))["ok"] is True
            update = api.make_successful_payment_update(
                70, 70, sent.params["payload"], "RUB", 300_00, charge_id="rub-charge"
            )
            assert await stack.post(update) == 200
            assert await available(stack, 70) == 300_00
            assert await admin(stack, "/refund rub-charge") == t("refund_not_stars")
        async with running_stack(db_url=migrated_database_url, api=api) as plain:
            chat = plain.chat(71)
            await chat.send("/start")
            await chat.tap("💰 Баланс")
            await chat.tap("💳 Пополнить")
            assert "300 ₽ картой" not in [label for label, _ in chat.screen().flat()]
