"""Telegram's payment updates: the pre-checkout check and the successful payment.

Included before the engine's router, so a `successful_payment` message is never
taken for unexpected input.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiogram import F, Router
from aiogram.types import Message, PreCheckoutQuery

from flows.payments.service import PaymentsService
from flows.text_keys import PreCheckoutRefusal

log = logging.getLogger(__name__)


# Telegram cancels a payment whose pre-checkout query is not answered within 10 s (S13):
# a slow check is refused in time, and the user can simply pay again.
PRE_CHECKOUT_BUDGET_S = 7.0


def payments_router(
    payments: PaymentsService,
    locale_of: Callable[[str | None], str],
    budget_s: float = PRE_CHECKOUT_BUDGET_S,
) -> Router:
    router = Router(name="payments")

    @router.pre_checkout_query()
    async def pre_checkout(query: PreCheckoutQuery) -> None:
        locale = locale_of(query.from_user.language_code)
        refusal: PreCheckoutRefusal | None
        try:
            async with asyncio.timeout(budget_s):
                refusal = await payments.check(
                    query.from_user.id, query.invoice_payload, query.currency, query.total_amount
                )
        except TimeoutError:
            log.warning("pre-checkout %s took longer than %.1f s; refused", query.id, budget_s)
            refusal = "pay_slow"
        except Exception:
            log.exception("pre-checkout %s failed", query.id)
            refusal = "pay_unknown_order"
        if refusal is None:
            await query.answer(ok=True)
        else:
            await query.answer(ok=False, error_message=payments.text(refusal, locale))

    @router.message(F.successful_payment)
    async def paid(message: Message) -> None:
        payment = message.successful_payment
        assert payment is not None and message.from_user is not None
        await payments.on_paid(
            user_id=message.from_user.id,
            chat_id=message.chat.id,
            locale=locale_of(message.from_user.language_code),
            payload=payment.invoice_payload,
            currency=payment.currency,
            amount=payment.total_amount,
            charge_id=payment.telegram_payment_charge_id,
            provider_charge_id=payment.provider_payment_charge_id,
        )

    return router
