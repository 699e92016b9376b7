"""The record of handled update ids: known at once, written behind in batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import processed_updates
from storage.db import create_engine
from storage.models import ProcessedUpdate, table_of
from storage.one_statement import statement_engines
from storage.processed_updates import ProcessedUpdates
from storage.settings import DatabaseSettings

_table = table_of(ProcessedUpdate)


def count_writes(engine: AsyncEngine) -> list[int]:
    """INSERT statements into processed_updates (one per write, however many rows)."""
    writes = [0]

    def _insert(_c: object, _cur: object, sql: str, *_: object) -> None:
        if sql.startswith("INSERT INTO processed_updates"):
            writes[0] += 1

    for sync_engine in statement_engines(engine):
        event.listen(sync_engine, "before_cursor_execute", _insert)
    return writes


async def test_a_recorded_id_is_seen_at_once_and_written_by_flush(db_engine: AsyncEngine) -> None:
    processed = ProcessedUpdates(db_engine, flush_every_s=3600)
    assert not await processed.seen(7)
    processed.record(7)
    assert await processed.seen(7)  # known to this process before it is written
    assert not await ProcessedUpdates(db_engine).seen(7)
    await processed.flush()
    assert await ProcessedUpdates(db_engine).seen(7)
    processed.record(7)  # a second record of one id is no error
    await processed.flush()
    assert await processed.seen(7)


async def test_ids_recorded_within_the_interval_share_one_write(db_engine: AsyncEngine) -> None:
    processed = ProcessedUpdates(db_engine, flush_every_s=0.05)
    writes = count_writes(db_engine)
    ids = list(range(100, 140))
    for i in ids:
        processed.record(i)
    fresh = ProcessedUpdates(db_engine)
    for _ in range(200):  # written behind, without a flush
        if await fresh.seen(ids[-1]):
            break
        await asyncio.sleep(0.01)
    assert writes[0] == 1
    assert all([await fresh.seen(i) for i in ids])
    processed.record(200)
    await processed.close()  # what the service does as it stops
    assert writes[0] == 2
    assert await fresh.seen(200)


async def test_a_failed_write_keeps_the_ids_for_the_next(tmp_path: Path) -> None:
    engine = create_engine(DatabaseSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"))
    try:
        processed = ProcessedUpdates(engine, flush_every_s=3600)  # no table yet
        for i in range(5):
            processed.record(i)
        with pytest.raises(OperationalError):
            await processed.flush()
        assert all([await processed.seen(i) for i in range(5)])  # still known here
        await processed.close()  # fails too: logged, not raised
        async with engine.begin() as conn:
            await conn.run_sync(ProcessedUpdate.metadata.create_all, tables=[_table])
        await processed.flush()  # and the next write writes them
        fresh = ProcessedUpdates(engine)
        assert all([await fresh.seen(i) for i in range(5)])
    finally:
        await engine.dispose()


def count_lookups(engine: AsyncEngine) -> list[int]:
    lookups = [0]

    def _select(_c: object, _cur: object, sql: str, *_: object) -> None:
        if sql.startswith("SELECT") and "processed_updates" in sql:
            lookups[0] += 1

    for sync_engine in statement_engines(engine):
        event.listen(sync_engine, "before_cursor_execute", _select)
    return lookups


async def test_a_tap_of_a_conversation_held_in_memory_is_not_looked_up(
    db_engine: AsyncEngine,
) -> None:
    processed = ProcessedUpdates(db_engine, flush_every_s=3600, holds=lambda k: k == "1:1")
    lookups = count_lookups(db_engine)
    assert not await processed.seen(10, "1:1", tap=True)
    assert lookups[0] == 0
    assert not await processed.seen(11, "2:2", tap=True)  # not held: looked up
    assert not await processed.seen(12, "1:1", tap=False)  # a message: always looked up
    assert lookups[0] == 2
    processed.record(10)
    await processed.flush()
    assert await processed.seen(10, "1:1", tap=True)  # handled here: known without a read
    assert lookups[0] == 2


async def test_handled_ids_stay_known_after_their_write_the_last_recent_of_them(
    db_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processed_updates, "RECENT", 3)
    processed = ProcessedUpdates(db_engine, flush_every_s=3600, holds=lambda _: True)
    for update_id in (1, 2, 3, 4):
        processed.record(update_id)
    await processed.flush()
    lookups = count_lookups(db_engine)
    assert [await processed.seen(i, "1:1", tap=True) for i in (2, 3, 4)] == [True] * 3
    # The oldest is forgotten here (the engine's counter check decides such a tap)...
    assert not await processed.seen(1, "1:1", tap=True)
    assert lookups[0] == 0
    assert await processed.seen(1, "1:1")  # ...but a message's lookup finds it written
    assert lookups[0] == 1
