"""Migrated PostgreSQL databases for tests, reused instead of created for each test.

A test gets a database of its own at the latest migration. Creating one from a
template and dropping it afterwards cost about half a second of PostgreSQL's time per
test (CREATE DATABASE writes every block of the copy to the WAL; DROP syncs), nearly a
minute and a half per run. So a database a test is done with is put back as it was
made instead: its other sessions ended, every table emptied and refilled with the
rows the migrations wrote (the ledger's system accounts, the revision), its
sequences set back. A database that a test changed beyond its rows (a renamed table,
a dropped function, connections switched off) or that cannot be put back is dropped,
and the next test gets a new copy of the template.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg

# What "as the migrations made it" means beyond rows: tables and their columns,
# indexes, constraints, functions and triggers of the public schema.
_SHAPE = """
SELECT md5(string_agg(part, E'\\n' ORDER BY part)) FROM (
  SELECT 'c ' || table_name || '.' || column_name || ' ' || data_type || ' '
         || is_nullable || ' ' || coalesce(column_default, '') AS part
    FROM information_schema.columns WHERE table_schema = 'public'
  UNION ALL SELECT 'i ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT 'k ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'f ' || proname || ' ' || md5(prosrc)
    FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 't ' || tgname || ' ' || tgrelid::regclass::text
    FROM pg_trigger WHERE NOT tgisinternal
) AS shape
"""
_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
_SEQUENCES = (
    "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' "
    "ORDER BY sequencename"
)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class _Migrated:
    """What a migrated database holds: its shape, its rows and its sequences."""

    shape: str
    rows: dict[str, list[asyncpg.Record]]
    sequences: dict[str, int | None]


class PostgresDatabases:
    """The migrated databases of one test process (see the module's docstring)."""

    def __init__(self, server_dsn: str, template: str) -> None:
        """`server_dsn`: an asyncpg DSN of any database on the server (its admin
        connection); `template`: the migrated database the copies are made from."""
        self._server_dsn = server_dsn
        self._template = template
        self._free: list[str] = []
        self._made: list[str] = []
        self._migrated: _Migrated | None = None

    def _dsn(self, database: str) -> str:
        head, _, _ = self._server_dsn.rpartition("/")
        return f"{head}/{database}"

    async def _admin(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self._server_dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def _read_migrated(self) -> _Migrated:
        conn = await asyncpg.connect(self._dsn(self._template))
        try:
            shape = await conn.fetchval(_SHAPE)
            tables = [r["tablename"] for r in await conn.fetch(_TABLES)]
            rows = {t: list(await conn.fetch(f"SELECT * FROM {_quoted(t)}")) for t in tables}
            sequences = {r["sequencename"]: r["last_value"] for r in await conn.fetch(_SEQUENCES)}
        finally:
            await conn.close()
        return _Migrated(shape, rows, sequences)

    async def take(self, name: str) -> str:
        """A migrated database's name: one put back earlier, or a new copy named `name`."""
        if self._migrated is None:
            self._migrated = await self._read_migrated()
        if self._free:
            return self._free.pop()
        await self._admin(f"CREATE DATABASE {_quoted(name)} TEMPLATE {_quoted(self._template)}")
        self._made.append(name)
        return name

    async def give_back(self, name: str) -> None:
        """Puts `name` back as migrated for the next test, or drops it if it cannot be."""
        try:
            async with asyncio.timeout(30):
                reusable = await self._put_back(name)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            reusable = False
        if reusable:
            self._free.append(name)
        else:
            await self._drop(name)

    async def _put_back(self, name: str) -> bool:
        assert self._migrated is not None
        [allowed] = await self._admin(
            "SELECT datallowconn FROM pg_database WHERE datname = $1", name
        )
        if not allowed["datallowconn"]:
            return False
        # A test's engine or subprocess may still hold sessions (and their locks).
        await self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        conn = await asyncpg.connect(self._dsn(name))
        try:
            if await conn.fetchval(_SHAPE) != self._migrated.shape:
                return False
            await conn.execute("SET lock_timeout = '10s'")
            async with conn.transaction():
                tables = ", ".join(_quoted(t) for t in self._migrated.rows)
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
                for table, rows in self._migrated.rows.items():
                    if rows:
                        await conn.copy_records_to_table(
                            table, records=rows, columns=list(rows[0].keys())
                        )
                for sequence, last in self._migrated.sequences.items():
                    if last is not None:
                        await conn.execute("SELECT setval($1::regclass, $2)", sequence, last)
        finally:
            await conn.close()
        return True

    async def _drop(self, name: str) -> None:
        with contextlib.suppress(ValueError):
            self._made.remove(name)
        await self._admin(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")

    async def drop_all(self) -> None:
        """At the end of the test process: every database made here."""
        for name in list(self._made):
            await self._drop(name)
        self._free.clear()
