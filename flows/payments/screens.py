"""Top-up packages, promo codes and the referral screen, as flows.yaml names them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from engine.registry import Context, Option, Outcome, Registry
from flows.payments.referral import referral_link
from flows.text_keys import PROMO_NOTICES
from pricing.money import rub

if TYPE_CHECKING:
    from flows.payments.service import PaymentsService
    from flows.services import Services


def register_payment_screens(registry: Registry, services: Callable[[], Services]) -> None:
    def payments() -> PaymentsService:
        return services().payments

    @registry.options("topup_packages")
    async def topup_packages(ctx: Context) -> Sequence[Option]:
        return [Option(p.id, p.title) for p in payments().packages.values()]

    @registry.action("buy_package")
    async def buy_package(ctx: Context) -> Outcome:
        await payments().send_invoice(
            ctx.user_id, ctx.chat_id, ctx.locale, str(ctx.data.get("package")), ctx.run_key
        )
        return Outcome(notice="invoice_sent")

    @registry.action("redeem_promo")
    async def redeem_promo(ctx: Context) -> Outcome:
        code = str(ctx.data.pop("promo_code", "")).strip().upper()
        status, _ = await payments().redeem_promo(code, ctx.user_id, ctx.locale, ctx.run_key)
        if status != "ok":
            return Outcome(to="promo", notice=PROMO_NOTICES[status])
        return Outcome(to="balance", notice="promo_ok")

    @registry.data("referral_info")
    async def referral_info(ctx: Context) -> Mapping[str, object]:
        me = await ctx.bot.me()
        account = await services().existing_account(ctx.user_id)
        lines = [] if account is None else await services().ledger.statement(account, limit=1000)
        earned = sum(line.posted for line in lines if line.reason == "referral")
        return {
            "link": referral_link(me.username or "", ctx.user_id),
            "earned": rub(earned, ctx.locale),
            "bonus": rub(payments().settings.referral_bonus, ctx.locale),
        }
