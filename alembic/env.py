"""Alembic's entry point, for the CLI and for storage.migrate alike.

It builds its engine with storage.db.create_engine, so migrations see the
database exactly as the bot does (SQLite in WAL mode, its directory created).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from sqlalchemy.engine import Connection

from alembic import context
from storage.db import create_engine
from storage.models import metadata
from storage.settings import DatabaseSettings, parse_database_url

config = context.config

# Only the CLI wants alembic.ini's logging; when the bot or a test migrates,
# reconfiguring logging would silence the host's own loggers.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """storage.migrate passes the URL in; the CLI takes DATABASE_URL."""
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else DatabaseSettings().database_url


def configure(is_sqlite: bool, **how: Any) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=is_sqlite,
        **how,
    )


def run_offline() -> None:
    url = database_url()
    is_sqlite = parse_database_url(url).get_backend_name() == "sqlite"
    configure(is_sqlite, url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def migrate(connection: Connection) -> None:
    configure(connection.dialect.name == "sqlite", connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    url = database_url()
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
