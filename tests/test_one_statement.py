"""Single statements on a SQLite file run on the event loop's thread, and still wait for
another process's lock without holding the loop (storage.one_statement)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import one_statement
from storage.db import create_engine
from storage.settings import DatabaseSettings

_meta = MetaData()
_items = Table("items", _meta, Column("id", Integer, primary_key=True))
_ADD = insert(_items)
_ALL = select(_items.c.id).order_by(_items.c.id)


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    path = tmp_path / "one.db"
    engine = create_engine(DatabaseSettings(database_url=f"sqlite+aiosqlite:///{path}"))
    async with engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    yield engine, path
    await engine.dispose()


def _hold_write_lock(path: Path, seconds: float, taken: threading.Event) -> None:
    """Another process's writer, as far as SQLite can tell: its own connection."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        other.execute("COMMIT")
    finally:
        other.close()


def threads_of_statements(engine: AsyncEngine) -> list[str]:
    """The name of the thread each statement sent for `engine` from now on runs on."""
    threads: list[str] = []

    def seen(*_: object) -> None:
        threads.append(threading.current_thread().name)

    for sync_engine in one_statement.statement_engines(engine):
        event.listen(sync_engine, "before_cursor_execute", seen)
    return threads


async def test_statements_run_on_the_calling_thread_not_in_aiosqlite(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    engine, _ = sqlite_file
    assert len(one_statement.statement_engines(engine)) == 2  # async, and the one beside it
    threads = threads_of_statements(engine)
    assert await one_statement.write(engine, _ADD, {"id": 1}) == 1
    row = await one_statement.read(engine, _ALL, {})
    assert row is not None and row.id == 1
    assert await one_statement.read(engine, _ALL.where(_items.c.id == 2), {}) is None
    assert threads == [threading.current_thread().name] * 3


async def test_a_list_of_rows_is_one_transaction(sqlite_file: tuple[AsyncEngine, Path]) -> None:
    engine, _ = sqlite_file
    assert await one_statement.write(engine, _ADD, [{"id": 1}, {"id": 2}]) == 2
    with pytest.raises(IntegrityError):  # 3 is new, 2 is not: neither is written
        await one_statement.write(engine, _ADD, [{"id": 3}, {"id": 2}])
    async with engine.connect() as conn:
        assert (await conn.execute(_ALL)).scalars().all() == [1, 2]


async def test_several_writes_are_one_transaction_on_the_loop(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    engine, path = sqlite_file
    threads = threads_of_statements(engine)
    await one_statement.write_each(engine, [(_ADD, {"id": 1}), (_ADD, {"id": 2})])
    assert len(threads) >= 2 and set(threads) == {threading.current_thread().name}  # + BEGIN
    with pytest.raises(IntegrityError):  # 3 is new, 2 is not: neither is written
        await one_statement.write_each(engine, [(_ADD, {"id": 3}), (_ADD, {"id": 2})])
    # Another process holds the write lock: the transaction waits for it, then writes both.
    taken = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.3, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    try:
        await one_statement.write_each(engine, [(_ADD, {"id": 4}), (_ADD, {"id": 5})])
    finally:
        await asyncio.to_thread(holder.join)
    async with engine.connect() as conn:
        assert (await conn.execute(_ALL)).scalars().all() == [1, 2, 4, 5]
    # The last statement's rows come back (INSERT ... RETURNING).
    made = await one_statement.write_each(
        engine, [(_ADD, {"id": 6}), (_ADD.returning(_items.c.id), {"id": 9})]
    )
    assert [row.id for row in made] == [9]


async def test_a_write_waits_for_another_process_without_holding_the_loop(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    engine, path = sqlite_file
    taken = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.6, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await one_statement.write(engine, _ADD, {"id": 7}) == 1  # after the holder
    finally:
        ticker.cancel()
        await asyncio.to_thread(holder.join)
    # The loop went on while the write waited 0.6 s: a blocked loop would tick once.
    assert ticks >= 10, ticks
    row = await one_statement.read(engine, _ALL, {})
    assert row is not None and row.id == 7


async def test_a_write_gives_up_after_the_patience(
    sqlite_file: tuple[AsyncEngine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, path = sqlite_file
    monkeypatch.setattr(one_statement, "PATIENCE_S", 0.2)
    taken = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.0, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    try:
        with pytest.raises(OperationalError, match="locked"):
            await one_statement.write(engine, _ADD, {"id": 8})
        # Reads go on meanwhile (WAL): the writer blocks no reader.
        assert await one_statement.read(engine, _ALL, {}) is None
    finally:
        await asyncio.to_thread(holder.join)


async def test_postgresql_and_in_memory_sqlite_take_the_async_engine(
    db_engine: AsyncEngine,
) -> None:
    sync_only = db_engine.dialect.name == "postgresql"
    engines = one_statement.statement_engines(db_engine)
    assert len(engines) == (1 if sync_only else 2)
    memory = create_engine(DatabaseSettings(database_url="sqlite+aiosqlite:///:memory:"))
    try:
        assert one_statement.statement_engines(memory) == [memory.sync_engine]
        async with memory.begin() as conn:
            await conn.run_sync(_meta.create_all)
        assert await one_statement.write(memory, _ADD, [{"id": 1}, {"id": 2}]) == 2
        row = await one_statement.read(memory, _ALL, {})
        assert row is not None and row.id == 1
    finally:
        await memory.dispose()


async def test_the_loop_never_syncs_and_checkpoints_run_off_it(
    sqlite_file: tuple[AsyncEngine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = sqlite_file
    monkeypatch.setattr(one_statement, "CHECKPOINT_EVERY", 5)
    loop_side, async_side = one_statement.statement_engines(engine)[::-1]
    with loop_side.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    # On the async engine, whose driver calls run in aiosqlite's thread.
    checkpoints: list[str] = []

    def done(_c: object, _cur: object, sql: str, *_: object) -> None:
        if "wal_checkpoint" in sql:
            checkpoints.append(sql)

    event.listen(async_side, "after_cursor_execute", done)

    ids = iter(range(1000))

    async def written(count: int, then: int) -> None:
        for _ in range(count):
            await one_statement.write(engine, _ADD, {"id": next(ids)})
        for _ in range(200):
            if len(checkpoints) == then:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # and let its task end

    await written(4, 0)
    assert checkpoints == []
    await written(1, 1)  # the 5th write
    await written(5, 2)  # the 10th
    await written(2, 2)
    assert len(checkpoints) == 2
