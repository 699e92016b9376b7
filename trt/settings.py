"""Application settings from the environment and `.env`.

Every value is checked when the settings are read, at start-up, so a typo fails
then with a message naming the variable (`describe`), not on the first update.
Values never appear in those messages: some of them are secrets.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    bot_token: str | None = Field(default=None, alias="BOT_TOKEN", pattern=r"^[0-9]+:[\w-]+$")
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="LOG_LEVEL"
    )
    # production: JSON log lines; development: a readable console.
    environment: Literal["development", "production"] = Field(
        default="development", alias="ENVIRONMENT"
    )
    log_format: Literal["auto", "json", "console"] = Field(default="auto", alias="LOG_FORMAT")
    metrics_token: str | None = Field(default=None, alias="METRICS_TOKEN", min_length=16)
    flood_rate: float = Field(default=3.0, alias="FLOOD_RATE", gt=0)
    flood_burst: int = Field(default=10, alias="FLOOD_BURST", ge=1)
    flood_in_flight: int = Field(default=5, alias="FLOOD_IN_FLIGHT", ge=1)
    shutdown_timeout_s: float = Field(default=20.0, alias="SHUTDOWN_TIMEOUT_S", gt=0)
    webhook_max_connections: int = Field(default=40, alias="WEBHOOK_MAX_CONNECTIONS", ge=1, le=100)
    processed_updates_keep_h: float = Field(default=48.0, alias="PROCESSED_UPDATES_KEEP_H", gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("webhook_url", "telegram_api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.environment == "production"
        return self.log_format == "json"


def describe(error: ValidationError) -> str:
    """One line per bad setting, by its variable name; never the value."""
    lines = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or error.title
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(message if message.startswith(name) else f"{name}: {message}")
    return "\n".join(lines)


PACKAGES = ("engine", "flows", "storage", "pricing", "kie", "trt")
# The modules that declare settings classes. Named, not discovered, so that every command
# (an editor's `trt flows check` too) reads them without importing the whole project;
# `every_module` below finds them all, and a test proves this list is complete.
SETTINGS_MODULES = (
    "flows.generation.settings",
    "flows.payments.settings",
    "storage.settings",
    "trt.settings",
)


def every_module() -> None:
    """Imports every module of the project's packages (slow: all of aiogram)."""
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            importlib.import_module(info.name)


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of SETTINGS_MODULES and of any module imported already."""
    for name in SETTINGS_MODULES:
        importlib.import_module(name)
    found: list[type[BaseSettings]] = []
    pending = list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in PACKAGES and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda cls: (cls.__module__, cls.__name__))


def read_all() -> list[BaseSettings]:
    """Every settings class read from the environment now; one ValueError naming every
    bad variable of every class, so a deploy with three typos needs one attempt, not three."""
    read: list[BaseSettings] = []
    errors: list[str] = []
    for cls in settings_classes():
        try:
            read.append(cls())
        except ValidationError as exc:
            errors.append(describe(exc))
    if errors:
        raise ValueError("\n".join(errors))
    return read


_SECRET_NAMES = ("token", "key", "secret", "password")


def secret_values(settings: list[BaseSettings]) -> list[str]:
    """The values of every setting whose name says it is a secret, and the database
    password: what logs must never show."""
    found: list[str] = []
    for item in settings:
        for name, value in item:
            if isinstance(value, str) and any(part in name for part in _SECRET_NAMES):
                found.append(value)
                if name == "bot_token":
                    found.append(value.partition(":")[2])
            elif isinstance(value, str) and name == "database_url" and "@" in value:
                from sqlalchemy.engine import make_url  # only where a URL is read

                password = make_url(value).password
                if password:
                    found.append(str(password))
    return found
