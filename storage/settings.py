"""Database settings from the environment and `.env`.

The URL is checked here, at start-up, so that a typo in DATABASE_URL fails with
a message naming the variable instead of surfacing later as an obscure driver
error on the first update a user sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # SQLAlchemy is imported where a URL is parsed: every `trt` command
    from sqlalchemy.engine import URL  # reads these settings, editors' too

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/bot.db"

# Only async drivers: the whole stack runs on one event loop, and a sync driver
# would block it on every query.
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def parse_database_url(raw: str) -> URL:
    """Parse and vet a database URL; the error never echoes a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "DATABASE_URL is not a database URL; expected e.g. "
            f"{DEFAULT_DATABASE_URL!r} or 'postgresql+asyncpg://user:password@host:5432/db'"
        ) from None
    shown = url.render_as_string(hide_password=True)
    if url.drivername not in SUPPORTED_DRIVERS:
        raise ValueError(
            f"DATABASE_URL {shown!r} uses driver {url.drivername!r}; "
            f"supported: {', '.join(SUPPORTED_DRIVERS)}"
        )
    if url.get_backend_name() == "sqlite" and (url.host or url.port):
        raise ValueError(
            f"DATABASE_URL {shown!r} names a host, but SQLite takes a file path: "
            "use three slashes for a relative path (sqlite+aiosqlite:///./data/bot.db) "
            "or four for an absolute one"
        )
    if url.get_backend_name() == "postgresql" and not url.database:
        raise ValueError(f"DATABASE_URL {shown!r} names no database")
    return url


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        # The URL may carry a password; keep it out of validation messages.
        hide_input_in_errors=True,
    )

    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    # Sized for the service's concurrency. No overflow by default: a connection beyond
    # the pool is closed when returned, so under a burst the pool churned (56 server
    # sessions opened per 4,500 taps at 32 requests in flight, bench/service_bench.py);
    # waiting milliseconds for a pooled connection is cheaper than a new session.
    pool_size: int = Field(default=20, alias="DB_POOL_SIZE", ge=1)
    max_overflow: int = Field(default=0, alias="DB_MAX_OVERFLOW", ge=0)
    pool_timeout: float = Field(default=10.0, alias="DB_POOL_TIMEOUT", gt=0)
    # Off by default: a ping is one more round trip per checkout (the ledger benchmark
    # measured a quarter fewer hold+post pairs/s with it). Without it, after a server
    # restart the first call to meet a dead connection fails, and the pool then replaces
    # every connection older than it; ledger calls retry by themselves (their keys make
    # that safe), an update gets a 503 and Telegram delivers it again.
    pool_pre_ping: bool = Field(default=False, alias="DB_POOL_PRE_PING")
    # Connections older than this are replaced at checkout (proxies and servers that
    # close idle connections); -1 keeps them forever.
    pool_recycle: int = Field(default=1800, alias="DB_POOL_RECYCLE", ge=-1)
    echo: bool = Field(default=False, alias="DB_ECHO")

    @field_validator("database_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        if value != DEFAULT_DATABASE_URL:  # the default is known good (a test parses it)
            parse_database_url(value)
        return value
