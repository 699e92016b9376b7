"""Payment and growth settings from the environment and `.env`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pricing.catalog import rub_to_kopecks


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    # A Telegram Payments provider token (e.g. YooKassa) switches RUB packages on.
    payment_provider_token: str | None = Field(default=None, alias="PAYMENT_PROVIDER_TOKEN")
    order_ttl_s: float = Field(default=3600, alias="ORDER_TTL_S", gt=0)
    # Telegram gives a pre-checkout query 10 s; a check slower than this is refused in time.
    pre_checkout_budget_s: float = Field(default=7, alias="PRE_CHECKOUT_BUDGET_S", gt=0, lt=10)
    welcome_bonus_rub: str = Field(default="0", alias="WELCOME_BONUS_RUB")
    referral_bonus_rub: str = Field(default="50", alias="REFERRAL_BONUS_RUB")
    # Comma-separated Telegram user ids; to everyone else admin commands do not exist.
    admin_ids: Annotated[frozenset[int], NoDecode] = Field(default=frozenset(), alias="ADMIN_IDS")

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _ids(cls, raw: object) -> object:
        if isinstance(raw, str):
            return frozenset(int(part) for part in raw.replace(" ", "").split(",") if part)
        return raw

    @property
    def welcome_bonus(self) -> int:
        return rub_to_kopecks(self.welcome_bonus_rub)

    @property
    def referral_bonus(self) -> int:
        return rub_to_kopecks(self.referral_bonus_rub)
