"""The campaign's database: made fresh, read for the checks, and broken on purpose.

Why these faults look as they do:

- PostgreSQL "drop": every backend of the database is terminated from a separate admin
  connection, as when a proxy or the server kills connections; the pool learns of it
  on its next use. "refuse": the database stops accepting connections
  (`ALLOW_CONNECTIONS false`) and its backends are terminated, for a few seconds, as
  during a failover; then it is allowed again.
- SQLite has no server and no connection to drop. Its honest equivalents are another
  process holding the write lock: for one second ("drop": inside the 5 s busy timeout,
  so the service must simply wait), or for seven seconds ("refuse": beyond the busy
  timeout, so writes fail with "database is locked" and updates must be redelivered).
  In WAL mode readers go on meanwhile, as they would.
- A "gate" holds a PostgreSQL table in EXCLUSIVE mode (reads pass, writes wait), so the
  service stops exactly at its first write to that table: the campaign then strikes
  while the service is blocked there, which pins effect points that no outside call
  marks (before the hold, between recording a payment and crediting it). SQLite has
  only one lock for the whole file, so gates are PostgreSQL-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import create_engine
from storage.migrate import upgrade_to_head
from storage.settings import DatabaseSettings

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SQLITE_DROP_S = 1.0
SQLITE_REFUSE_S = 7.0
PG_REFUSE_S = 3.0


def admin_url() -> URL:
    """TEST_DATABASE_URL (as the suite reads it): a database of the server to administer
    from, never one under test."""
    url = make_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_ADMIN_URL)
    return url.set(drivername="postgresql+asyncpg")


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres(admin: URL) -> str:
    """A new, empty, migrated database on the admin's server."""
    name = f"trt_faults_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_dsn(admin))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade_to_head, url)
    return url


async def drop_postgres(admin: URL, url: str) -> None:
    name = make_url(url).database
    conn = await asyncpg.connect(_dsn(admin))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_sqlite(directory: Path) -> str:
    url = f"sqlite+aiosqlite:///{directory / 'bot.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    return url


@dataclass
class Gate:
    """A PostgreSQL table held in EXCLUSIVE mode until `release`."""

    table: str
    conn: asyncpg.Connection
    watcher: asyncpg.Connection

    async def blocked(self, within_s: float) -> bool:
        """Whether a writer of the service now waits at the gate."""
        async with asyncio.timeout(within_s):
            while True:
                waiting = await self.watcher.fetchval(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = $1 AND NOT l.granted AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())",
                    self.table,
                )
                if waiting:
                    return True
                await asyncio.sleep(0.02)
        return False  # pragma: no cover - the timeout raises

    async def release(self) -> None:
        for conn in (self.conn, self.watcher):
            with contextlib.suppress(Exception):
                await conn.close()


class Database:
    """The database under test, as the campaign sees it from outside the service."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.kind = parsed.get_backend_name()
        self.name = parsed.database or ""
        self.engine: AsyncEngine = (
            create_engine(DatabaseSettings(database_url=url))
            if self.kind == "sqlite"
            # No pool: a fault kills connections, and the checks must not meet dead ones.
            else create_async_engine(url, poolclass=NullPool)
        )
        self.admin = admin_url() if self.kind == "postgresql" else None
        self._outages: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.until_available()
        await self.engine.dispose()

    # ------------------------------------------------------------ faults

    async def drop(self) -> None:
        """PostgreSQL: terminate every backend of the database. SQLite: a 1 s lock."""
        if self.kind == "sqlite":
            self._spawn(self._sqlite_lock(SQLITE_DROP_S))
            return
        conn = await asyncpg.connect(_dsn(make_url(self.url)))
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    async def refuse(self) -> None:
        """PostgreSQL: no connections for 3 s. SQLite: the write lock held for 7 s."""
        if self.kind == "sqlite":
            self._spawn(self._sqlite_lock(SQLITE_REFUSE_S))
            return
        await self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        await self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )
        self._spawn(self._allow_later(PG_REFUSE_S))

    async def until_available(self) -> None:
        """Until every outage started here is over."""
        while self._outages:
            await asyncio.gather(*list(self._outages), return_exceptions=True)

    async def gate(self, table: str) -> Gate:
        assert self.kind == "postgresql"
        dsn = _dsn(make_url(self.url))
        conn = await asyncpg.connect(dsn)
        await conn.execute("BEGIN")
        await conn.execute(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')
        return Gate(table, conn, await asyncpg.connect(dsn))

    # ------------------------------------------------------------ plumbing

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """An outage that ends by itself; `until_available` waits for it."""
        task = asyncio.create_task(work)
        self._outages.add(task)
        task.add_done_callback(self._outages.discard)

    async def _admin(self, sql: str) -> None:
        assert self.admin is not None
        conn = await asyncpg.connect(_dsn(self.admin))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _allow_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    async def _sqlite_lock(self, seconds: float) -> None:
        """Another connection (of another process than the service) holds the write lock."""
        path = make_url(self.url).database
        assert path is not None

        def take() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN EXCLUSIVE")
            return conn

        conn = await asyncio.to_thread(take)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(conn.execute, "ROLLBACK")
            await asyncio.to_thread(conn.close)
