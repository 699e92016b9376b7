"""Top-ups by Telegram Payments (Stars by default), refunds, and the bonuses that ride on them.

Only `successful_payment` credits, and it credits under a ledger id derived
from Telegram's charge id, so a redelivered update (S9) or a second charge for
one invoice (S12) each credit exactly once. `pre_checkout_query` only checks
(S13): the order exists, is this user's, the amount and currency match and it
has not expired.

Refund policy (S14): a refund takes back what the payment credited, so it is
refused when that much is no longer available (spent on generations or on
hold); the balance never goes negative and no debt is created. An admin who
still wants to give the Stars back can debit what is left and refund outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import logging
from datetime import timedelta

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import LabeledPrice

from engine.outbox import Notifier
from flows.payments.settings import PaymentSettings
from flows.text_keys import PreCheckoutRefusal, RefundResult
from pricing.money import rub
from pricing.topups import STARS, Package
from storage.ledger import HoldNotPending, InsufficientFunds, Ledger
from storage.payments import PaymentRecord, PaymentStore, PromoRefused
from storage.users import ensure_user, referrer_of

log = logging.getLogger(__name__)

REFUND_HOLD = timedelta(hours=1)
# What Telegram answers to refundStarPayment for a charge it has refunded already.
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


def ledger_id(prefix: str, key: str) -> str:
    """A ledger id from a key of any length (Telegram charge ids can be long)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{prefix}:{digest}"


def order_id(key: str) -> str:
    """An order (and invoice payload) id from the tap that asked for it: 96 bits."""
    return hashlib.sha256(f"order:{key}".encode()).hexdigest()[:24]


class PaymentsService:
    def __init__(
        self,
        *,
        store: PaymentStore,
        ledger: Ledger,
        bot: Bot,
        notifier: Notifier,
        settings: PaymentSettings,
        packages: list[Package],
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.bot = bot
        self.notifier = notifier
        self.text = notifier.text
        self.settings = settings
        self.packages = {p.id: p for p in packages}

    async def account(self, user_id: int, locale: str) -> int:
        """The user's account, created on first use (on the ledger's database)."""
        return await ensure_user(self.ledger.engine, user_id, language=locale)

    # ------------------------------------------------------------ invoices

    async def send_invoice(
        self, user_id: int, chat_id: int, locale: str, package_id: str, key: str
    ) -> None:
        """`key` is the tap's run key: a redelivered tap invoices the same order again
        (Telegram may or may not have shown the first invoice), never a second order."""
        package = self.packages.get(package_id)
        if package is None:
            raise LookupError(f"no package {package_id!r}")
        await self.account(user_id, locale)
        order = await self.store.create_order(
            id=order_id(key),
            user_id=user_id,
            package_id=package.id,
            currency=package.currency,
            amount=package.amount,
            credit=package.credit,
            expires_at=self.store.clock() + timedelta(seconds=self.settings.order_ttl_s),
        )
        title = package.title.get(locale) or next(iter(package.title.values()))
        await self.bot.send_invoice(
            chat_id,
            title=self.text("invoice_title", locale),
            description=self.text("invoice_description", locale).format(package=title),
            payload=order.id,
            currency=package.currency,
            prices=[LabeledPrice(label=title, amount=package.amount)],
            provider_token=(
                "" if package.currency == STARS else self.settings.payment_provider_token
            ),
        )

    async def check(
        self, user_id: int, payload: str, currency: str, amount: int
    ) -> PreCheckoutRefusal | None:
        """None when the payment may go ahead; else the key of the refusal text."""
        order = await self.store.order(payload)
        if order is None or order.user_id != user_id:
            return "pay_unknown_order"
        if order.currency != currency or order.amount != amount:
            return "pay_wrong_amount"
        if order.expires_at <= self.store.clock():
            return "pay_expired"
        return None

    async def on_paid(
        self,
        *,
        user_id: int,
        chat_id: int,
        locale: str,
        payload: str,
        currency: str,
        amount: int,
        charge_id: str,
        provider_charge_id: str | None,
    ) -> None:
        """Credits once per charge id, pays the referrer on a first top-up, shows a receipt."""
        order = await self.store.order(payload)
        if order is None:
            await self._orphan(user_id, currency, amount, charge_id, provider_charge_id)
            return
        payment, _ = await self.store.record_payment(
            charge_id=charge_id,
            order_id=order.id,
            user_id=user_id,
            currency=currency,
            amount=amount,
            credit=order.credit,
            provider_charge_id=provider_charge_id,
        )
        account = await self.account(user_id, locale)
        await self.ledger.credit(
            ledger_id("pay", charge_id),
            account,
            payment.credit,
            source="topups",
            reason="topup",
            note=order.package_id,
        )
        await self._referral_bonus(user_id)
        if payment.receipt_at is not None:
            return  # a redelivered update: credited above (idempotently), receipt sent
        # At least once: marked only after it was sent, so a receipt Telegram did not take
        # is sent again when the update comes back (a crash in between may send it twice);
        # marked before the balance screen, so a screen that fails does not repeat it.
        receipt = self.text("receipt", locale).format(amount=rub(payment.credit, locale))
        await self.bot.send_message(chat_id, receipt)
        await self.store.mark_receipt_sent(charge_id)
        await self.notifier.push(self.bot, chat_id, user_id, "balance", {})

    async def _orphan(
        self,
        user_id: int,
        currency: str,
        amount: int,
        charge_id: str,
        provider_charge_id: str | None,
    ) -> None:
        """Telegram took money for an order this bot does not know (a deploy lost it, or
        another bot's invoice): crediting would be a guess, so nothing is credited, but
        the payment is kept (credit 0) for an admin's /refund, and the admins are told."""
        await self.account(user_id, "ru")
        _, new = await self.store.record_payment(
            charge_id=charge_id,
            order_id=None,
            user_id=user_id,
            currency=currency,
            amount=amount,
            credit=0,
            provider_charge_id=provider_charge_id,
        )
        if not new:
            return
        log.error("payment %s for an unknown order recorded as an orphan", charge_id)
        values = {"charge": charge_id, "user": user_id, "amount": amount, "currency": currency}
        notice = self.text("admin_orphan_payment", "ru").format(
            **{k: html.escape(str(v)) for k, v in values.items()}
        )
        for admin in sorted(self.settings.admin_ids):
            try:
                await self.bot.send_message(admin, notice)
            except TelegramAPIError as exc:
                log.warning("admin %s not told of orphan payment: %s", admin, exc)

    async def _referral_bonus(self, user_id: int) -> None:
        """Once per referee (the ledger id is the referee's), on their first paid top-up."""
        bonus = self.settings.referral_bonus
        referrer = await referrer_of(self.store.engine, user_id)
        if bonus <= 0 or referrer is None:
            return
        account = await self.account(referrer, "ru")
        await self.ledger.credit(
            f"ref:{user_id}", account, bonus, source="bonus", reason="referral", note=str(user_id)
        )

    # ------------------------------------------------------------ promo codes

    async def redeem_promo(
        self, code: str, user_id: int, locale: str, run_key: str
    ) -> tuple[str, int]:
        """("ok", amount), or ("unknown" | "used" | "exhausted", 0).

        The claim (redemption row and use counter) commits in the credit's own
        transaction, so a failure anywhere leaves the code unspent and nothing credited;
        the credit's id is the (code, user) pair, so a retry never credits twice. The
        screen run that redeemed it (`run_key`), resumed after an outage, is told "ok"
        again; another attempt is told "used"."""
        amount = await self.store.promo_amount(code)
        if amount is None:
            return "unknown", 0
        if (redeemed_by := await self.store.redeemed_by(code, user_id)) is not None:
            return ("ok", amount) if redeemed_by == run_key else ("used", 0)
        account = await self.account(user_id, locale)
        try:
            await self.ledger.credit(
                ledger_id("promo", f"{code}:{user_id}"),
                account,
                amount,
                source="bonus",
                reason="promo",
                note=code,
                also=self.store.promo_claim(code, user_id, run_key),
            )
        except PromoRefused as refused:
            return refused.status, 0
        return "ok", amount

    # ------------------------------------------------------------ refunds

    async def refund(self, charge_id: str, key: str) -> RefundResult:
        """What came of it, as the key of the admin's reply in flows.yaml.

        `key` names the command asking (the admin's chat and message): every ledger id
        comes from it, so a redelivery of that command resumes where the first delivery
        stopped (the hold replays, the mark is its own, Telegram's "already refunded"
        counts as done, the post replays), and a different command is a second refund."""
        payment = await self.store.payment(charge_id)
        if payment is None:
            return "refund_unknown"
        if payment.currency != STARS:
            return "refund_not_stars"
        if payment.refunded_at is not None and payment.refund_key != key:
            return "refund_again"
        hold_id = ledger_id("rfh", key)
        if payment.credit > 0:
            account = await self.account(payment.user_id, "ru")
            try:
                await self.ledger.hold(
                    hold_id,
                    account,
                    payment.credit,
                    expires_in=REFUND_HOLD,
                    reason="refund",
                    destination="topups",
                )
            except InsufficientFunds:
                return "refund_spent"
        if not await self.store.mark_refunded(charge_id, key):
            await self._release(payment, key)
            return "refund_again"
        try:
            await self.bot.refund_star_payment(payment.user_id, charge_id)
        except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter):
            # No answer, or not now: Telegram may have refunded already. The hold and the
            # mark stay; the command's redelivery asks again (Telegram then says
            # CHARGE_ALREADY_REFUNDED if it did) and finishes the refund.
            log.warning("refundStarPayment %s: outcome unknown; retried on redelivery", charge_id)
            raise
        except TelegramAPIError as exc:
            if ALREADY_REFUNDED not in str(exc):
                log.warning("refundStarPayment %s refused: %s", charge_id, exc)
                await self._release(payment, key)
                await self.store.unmark_refunded(charge_id, key)
                return "refund_failed"
        if payment.credit > 0:
            await self.ledger.post(ledger_id("rfp", key), hold_id)
        return "refund_done"

    async def _release(self, payment: PaymentRecord, key: str) -> None:
        if payment.credit > 0:
            with contextlib.suppress(HoldNotPending):
                await self.ledger.void(ledger_id("rfv", key), ledger_id("rfh", key))
