"""Application settings from the environment and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    bot_token: str | None = Field(default=None, alias="BOT_TOKEN")
    # Where the Bot API lives; empty means Telegram itself.
    telegram_api_base: str | None = Field(default=None, alias="TELEGRAM_API_BASE")
    webhook_secret: str = Field(
        default="local-dev-secret", alias="WEBHOOK_SECRET", pattern=r"^[A-Za-z0-9_-]{1,256}$"
    )
    webhook_url: str | None = Field(default=None, alias="WEBHOOK_URL")
    host: str = Field(default="0.0.0.0", alias="HOST")
    port: int = Field(default=8080, alias="PORT")
    flows_path: Path = Field(default=ROOT / "flows.yaml", alias="FLOWS_PATH")
    state_store: Literal["sql", "memory"] = Field(default="sql", alias="STATE_STORE")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
