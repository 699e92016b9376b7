"""The record of handled update ids: written before `add` returns, group-committed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.one_statement import statement_engines
from storage.processed_updates import ProcessedUpdates
from storage.settings import DatabaseSettings


def count_writes(engine: AsyncEngine) -> list[int]:
    """INSERT statements into processed_updates (one per write, however many rows)."""
    writes = [0]

    def _insert(_c: object, _cur: object, sql: str, *_: object) -> None:
        if sql.startswith("INSERT INTO processed_updates"):
            writes[0] += 1

    for sync_engine in statement_engines(engine):
        event.listen(sync_engine, "before_cursor_execute", _insert)
    return writes


async def test_each_add_returns_once_its_id_is_written(db_engine: AsyncEngine) -> None:
    processed = ProcessedUpdates(db_engine)
    assert not await processed.seen(7)
    await processed.add(7)
    assert await ProcessedUpdates(db_engine).seen(7)
    await processed.add(7)  # a second record of one id is no error
    assert await processed.seen(7)


async def test_updates_finishing_together_share_one_write(db_engine: AsyncEngine) -> None:
    processed = ProcessedUpdates(db_engine)
    writes = count_writes(db_engine)
    ids = list(range(100, 140))
    await asyncio.gather(*(processed.add(i) for i in ids))
    assert writes[0] == 1
    for i in range(200, 203):  # one at a time: one write each
        await processed.add(i)
    assert writes[0] == 4
    fresh = ProcessedUpdates(db_engine)
    assert all([await fresh.seen(i) for i in [*ids, 200, 201, 202]])


async def test_a_failed_write_fails_every_add_of_its_batch(tmp_path: Path) -> None:
    engine = create_engine(DatabaseSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"))
    try:
        processed = ProcessedUpdates(engine)  # no migration: the table is missing
        results = await asyncio.gather(
            *(processed.add(i) for i in range(5)), return_exceptions=True
        )
        assert len(results) == 5
        assert all(isinstance(r, OperationalError) for r in results), results
        with pytest.raises(OperationalError):
            await processed.add(9)  # and the next write tries again
    finally:
        await engine.dispose()
