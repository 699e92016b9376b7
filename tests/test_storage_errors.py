"""Which real database errors count as an outage (the webhook answers 503 and Telegram
delivers the update again) and which are mistakes that would fail on every delivery
(the update is apologised for and acknowledged, never retried forever).

The errors come from real databases, not hand-made exceptions: SQLite raises
OperationalError both for a locked file and for "no such column", and only the first
may be cured by waiting.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.errors import is_unavailable


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(database_url, connect_args=_quick(database_url))
    async with made.begin() as conn:
        await conn.execute(text("CREATE TABLE probe (a INTEGER)"))
    yield made
    await made.dispose()


def _quick(url: str) -> dict[str, float]:
    """SQLite gives up on a lock at once, so a test does not wait out a busy timeout."""
    return {"timeout": 0.05} if url.startswith("sqlite") else {}


async def _error_of(engine: AsyncEngine, sql: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    return caught.value


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT missing_column FROM probe",
        "SELECT a FROM missing_table",
        "SELEC 1",
    ],
)
async def test_a_schema_or_query_mistake_is_not_an_outage(engine: AsyncEngine, sql: str) -> None:
    error = await _error_of(engine, sql)
    assert not is_unavailable(error), repr(error)


async def test_a_locked_sqlite_database_is_an_outage(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE probe (a INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        error = await _error_of(engine, "INSERT INTO probe VALUES (1)")
        assert "locked" in str(error.orig)
        assert is_unavailable(error)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await engine.dispose()


async def test_an_sqlite_file_that_cannot_be_opened_is_an_outage(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'x.db'}")
    try:
        error = await _error_of(engine, "SELECT 1")
        assert is_unavailable(error), repr(error)
    finally:
        await engine.dispose()
        # aiosqlite's thread of the failed connect reports to this loop: let it finish.
        await asyncio.sleep(0.1)


async def test_a_postgres_server_that_refuses_connections_is_an_outage() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        # asyncpg raises OSError raw, SQLAlchemy may wrap it: whichever, it must count.
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert is_unavailable(caught.value), repr(caught.value)
    finally:
        await engine.dispose()
