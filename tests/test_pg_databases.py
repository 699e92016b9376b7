"""The suite's reused PostgreSQL databases come back exactly as migrated, or not at all.

tests/pg_databases.py puts a database back for the next test instead of dropping it;
if that left anything of a test behind, later tests would pass or fail by the order
they ran in. These tests change a database the ways tests do and check what the next
taker gets.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from tests.pg_databases import PostgresDatabases


@pytest.fixture
async def databases(
    postgres_admin_url: URL, postgres_template: str
) -> AsyncIterator[PostgresDatabases]:
    dsn = postgres_admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    made = PostgresDatabases(dsn, postgres_template)
    try:
        yield made
    finally:
        await made.drop_all()


def unique(stem: str) -> str:
    """Workers run these tests at once on one server: names must not meet."""
    return f"trt_test_{stem}_{uuid.uuid4().hex[:12]}"


def dsn_of(databases: PostgresDatabases, name: str) -> str:
    return databases._dsn(name)


async def fetch(databases: PostgresDatabases, name: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn_of(databases, name))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def run(databases: PostgresDatabases, name: str, *sql: str) -> None:
    conn = await asyncpg.connect(dsn_of(databases, name))
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


async def exists(databases: PostgresDatabases, name: str) -> bool:
    rows = await databases._admin("SELECT 1 FROM pg_database WHERE datname = $1", name)
    return bool(rows)


async def contents(databases: PostgresDatabases, name: str) -> dict[str, Any]:
    return {
        "accounts": await fetch(databases, name, "SELECT * FROM accounts ORDER BY id"),
        "revision": await fetch(databases, name, "SELECT * FROM alembic_version"),
        "users": await fetch(databases, name, "SELECT * FROM users"),
        "next account": await fetch(databases, name, "SELECT nextval('accounts_id_seq')"),
    }


async def test_a_database_comes_back_with_the_migrations_rows_only(
    databases: PostgresDatabases,
) -> None:
    name = await databases.take(unique("reuse_a"))
    migrated = await contents(databases, name)
    assert migrated["accounts"] and migrated["revision"] and not migrated["users"]
    await run(
        databases,
        name,
        "INSERT INTO users (id, language, created_at, is_active) VALUES (5, 'ru', now(), true)",
        "UPDATE accounts SET credits_posted = 700",
        "SELECT nextval('accounts_id_seq')",
        "SELECT nextval('accounts_id_seq')",
    )
    # A session the test left open (a pool not disposed) holding a lock.
    leftover = await asyncpg.connect(dsn_of(databases, name))
    await leftover.execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

    await databases.give_back(name)
    assert await databases.take(unique("reuse_b")) == name
    again = await contents(databases, name)
    assert again == migrated
    with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
        await leftover.execute("SELECT 1")  # the server ended it to put the database back


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE admin_audit RENAME TO admin_audit_gone",
        "ALTER TABLE users ADD COLUMN extra integer",
        "DROP INDEX ix_users_referrer_id",
        "CREATE FUNCTION left_behind() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ],
)
async def test_a_database_changed_beyond_its_rows_is_dropped(
    databases: PostgresDatabases, change: str
) -> None:
    name = await databases.take(unique("changed"))
    await run(databases, name, change)
    await databases.give_back(name)
    assert not await exists(databases, name)
    fresh = unique("fresh")
    assert await databases.take(fresh) == fresh


async def test_a_database_with_connections_switched_off_is_dropped(
    databases: PostgresDatabases,
) -> None:
    name = await databases.take(unique("closed"))
    await databases._admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await databases.give_back(name)
    assert not await exists(databases, name)
