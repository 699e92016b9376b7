"""Migrations from Python: for `trt migrate`, start-up and tests.

Alembic's env.py runs its own event loop (asyncio.run), which cannot start in
a thread whose loop is already running. Every call here therefore runs
Alembic on a short-lived thread of its own: it works the same from plain
code, from a worker thread (asyncio.to_thread) or, blocking that loop for the
duration, from inside a coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import create_engine
from storage.settings import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
# The newest migration's revision. Written here so that a database already at the head
# is recognised without importing Alembic (half of `trt migrate`'s time);
# test_migrations proves it equals the head Alembic finds under alembic/versions.
HEAD_REVISION = "0007"

_T = TypeVar("_T")


def _scripts_config() -> Config:
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    # Absolute, so the current directory does not matter.
    config.set_main_option("script_location", str(ROOT / "alembic"))
    return config


def alembic_config(database_url: str | None = None) -> Config:
    """The repo's alembic.ini, pointed at `database_url` (DATABASE_URL when None)."""
    url = database_url or DatabaseSettings().database_url
    config = _scripts_config()
    # Passed as an attribute, not the ini option, so a '%' in a password is
    # not taken for ConfigParser interpolation.
    config.attributes["database_url"] = url
    config.attributes["configure_logging"] = False
    return config


def _on_own_thread(work: Callable[[], _T]) -> _T:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alembic") as pool:
        return pool.submit(work).result()


def upgrade_to_head(database_url: str | None = None) -> None:
    """The migrations, then (PostgreSQL) the ledger's functions of this code; nothing
    (and no Alembic) when the database is at the head with those functions already."""
    url = database_url or DatabaseSettings().database_url
    if _on_own_thread(lambda: asyncio.run(_with_engine(url, _up_to_date))):
        return
    from alembic import command

    config = alembic_config(url)
    _on_own_thread(lambda: command.upgrade(config, "head"))
    if _is_postgresql(url):
        _on_own_thread(lambda: asyncio.run(_with_engine(url, _install_ledger_functions)))


async def read_revision(connection: AsyncConnection) -> str | None:
    """The revision in alembic_version, read without Alembic; None if never migrated."""
    try:
        # A savepoint: on PostgreSQL a failed statement would end the transaction.
        async with connection.begin_nested():
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except DBAPIError:  # no alembic_version table
        return None
    return None if version is None else str(version)


async def _up_to_date(connection: AsyncConnection) -> bool:
    if await read_revision(connection) != HEAD_REVISION:
        return False
    if connection.dialect.name != "postgresql":
        return True
    # Not ledger_plpgsql's full check: generating the functions costs 0.2 s. When this
    # says no, the upgrade (a no-op at the head) and `install` decide, and key them.
    from storage import ledger_source

    return await ledger_source.installed_here(connection)


def _is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


async def _with_engine(url: str, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with engine.begin() as connection:
            return await work(connection)
    finally:
        await engine.dispose()


async def _ledger_functions_problem(connection: AsyncConnection) -> str | None:
    from storage import ledger_plpgsql

    return await ledger_plpgsql.problem(connection)


async def _install_ledger_functions(connection: AsyncConnection) -> bool:
    from storage import ledger_plpgsql

    return await ledger_plpgsql.install(connection)


def downgrade_to_base(database_url: str | None = None) -> None:
    from alembic import command

    config = alembic_config(database_url)
    _on_own_thread(lambda: command.downgrade(config, "base"))


def head_revision() -> str:
    return HEAD_REVISION


def alembic_head() -> str:
    """The head as Alembic finds it in alembic/versions (slow: imports Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_scripts_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations under {ROOT / 'alembic' / 'versions'}")
    return head


def current_revision(database_url: str | None = None) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    url = database_url or DatabaseSettings().database_url

    def read(connection: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(connection).get_current_revision()

    async def probe() -> str | None:
        engine = create_engine(DatabaseSettings(database_url=url))
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return _on_own_thread(lambda: asyncio.run(probe()))


async def migration_problem(database_url: str | None = None) -> str | None:
    """Why the database cannot serve this code (not at the head migration, or on
    PostgreSQL ledger functions of other code), or None.

    Services refuse to start on an old schema rather than fail on the first update.
    """
    url = database_url or DatabaseSettings().database_url
    current = await _with_engine(url, read_revision)
    head = head_revision()
    if current != head:
        at = current or "none"
        return f"the database is at migration {at}, the code needs {head}: run `trt migrate`"
    if _is_postgresql(url):
        return await _with_engine(url, _ledger_functions_problem)
    return None
