"""SqlStateStore on SQLite and PostgreSQL: the compare-and-set must hold across
coroutines and across processes, since that is what stops a double tap from
running an action twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from engine.store import Snapshot
from storage import conversation_store
from storage.conversation_store import SqlStateStore, with_retries
from storage.db import create_engine, pool_usage, session_factory
from storage.models import ConversationState
from storage.settings import DEFAULT_DATABASE_URL, DatabaseSettings, parse_database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(db_engine: AsyncEngine) -> SqlStateStore:
    return SqlStateStore(db_engine)


async def updated_at(engine: AsyncEngine, key: str) -> Any:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT updated_at FROM conversation_state WHERE key = :k"), {"k": key}
        )
        return result.scalar_one()


# ------------------------------------------------------------- basic contract


async def test_load_of_unknown_key_is_none(store: SqlStateStore) -> None:
    assert await store.load("nobody") is None


async def test_insert_if_absent_succeeds_once(store: SqlStateStore) -> None:
    first = Snapshot("main", 1, "ru", {"who": "first"})
    assert await store.save("chat:1", first, None) is True

    second = Snapshot("other", 1, "en", {"who": "second"})
    assert await store.save("chat:1", second, None) is False

    assert await store.load("chat:1", fresh=True) == first


async def test_cas_with_the_stored_counter_succeeds(
    store: SqlStateStore, db_engine: AsyncEngine
) -> None:
    await store.save("chat:1", Snapshot("main", 1, "ru", {"step": 1}), None)
    before = await updated_at(db_engine, "chat:1")

    moved = Snapshot("catalog", 2, "en", {"step": 2})
    assert await store.save("chat:1", moved, expected_counter=1) is True

    assert await store.load("chat:1", fresh=True) == moved
    assert await updated_at(db_engine, "chat:1") >= before


async def test_cas_with_a_stale_counter_writes_nothing(store: SqlStateStore) -> None:
    original = Snapshot("main", 3, "ru", {"step": 3})
    await store.save("chat:1", original, None)

    assert await store.save("chat:1", Snapshot("x", 4, "en", {"lost": True}), 2) is False
    assert await store.save("chat:1", Snapshot("x", 4, "en", {"lost": True}), 4) is False

    assert await store.load("chat:1", fresh=True) == original


async def test_cas_on_a_missing_key_creates_nothing(store: SqlStateStore) -> None:
    assert await store.save("ghost", Snapshot("main", 1, "ru"), expected_counter=0) is False
    assert await store.load("ghost", fresh=True) is None


async def test_keys_are_independent(store: SqlStateStore) -> None:
    await store.save("a", Snapshot("main", 1, "ru", {"n": "a"}), None)
    await store.save("b", Snapshot("main", 1, "ru", {"n": "b"}), None)

    assert await store.save("a", Snapshot("next", 2, "ru", {"n": "a2"}), 1) is True

    assert await store.load("b", fresh=True) == Snapshot("main", 1, "ru", {"n": "b"})


async def test_data_json_round_trips(store: SqlStateStore) -> None:
    data: dict[str, Any] = {
        "prompt": "Кот в сапогах 🐈‍⬛, «ёлка» — 日本語",
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x", {"y": "ü"}]}], "empty": {}},
        "big": 2**53,
        "quote'\"\\": 'back\\slash "quotes" and\nnewline',
    }
    await store.save("chat:json", Snapshot("main", 1, "ru", data), None)

    loaded = await store.load("chat:json", fresh=True)

    assert loaded is not None
    assert loaded.data == data


async def test_counter_holds_values_beyond_32_bits(store: SqlStateStore) -> None:
    big = 2**40
    await store.save("chat:big", Snapshot("main", big, "ru"), None)
    assert await store.save("chat:big", Snapshot("main", big + 1, "ru"), big) is True
    loaded = await store.load("chat:big", fresh=True)
    assert loaded is not None and loaded.counter == big + 1


# ------------------------------------------------------------- copies in memory


async def test_a_load_after_a_write_answers_from_memory(
    store: SqlStateStore, db_engine: AsyncEngine
) -> None:
    saved = Snapshot("main", 1, "ru", {"n": [1]})
    await store.save("chat:copy", saved, None)
    async with db_engine.begin() as conn:  # the row goes behind the store's back
        await conn.execute(text("DELETE FROM conversation_state WHERE key = 'chat:copy'"))

    copy = await store.load("chat:copy")
    assert copy == saved and copy is not None and copy.cached
    assert await store.load("chat:copy", fresh=True) is None  # the row itself
    assert not store.holds("chat:copy")  # and what was read replaces the copy


async def test_a_loaded_copy_is_the_callers_own(store: SqlStateStore) -> None:
    await store.save("chat:own", Snapshot("main", 1, "ru", {"n": 1}), None)
    first = await store.load("chat:own")
    assert first is not None
    first.data["n"] = 2
    first.state = "changed"
    assert await store.load("chat:own") == Snapshot("main", 1, "ru", {"n": 1})


async def test_a_copy_another_process_overtook_fails_its_move_and_is_read_again(
    db_engine: AsyncEngine,
) -> None:
    ours, theirs = SqlStateStore(db_engine), SqlStateStore(db_engine)
    await ours.save("chat:race", Snapshot("main", 1, "ru", {"by": "us"}), None)
    assert await theirs.save("chat:race", Snapshot("help", 2, "ru", {"by": "them"}), 1)

    behind = await ours.load("chat:race")
    assert behind is not None and behind.cached and behind.counter == 1
    assert not await ours.save("chat:race", Snapshot("models", 2, "ru", {"by": "us"}), 1)
    assert not ours.holds("chat:race")
    now = await ours.load("chat:race")
    assert now == Snapshot("help", 2, "ru", {"by": "them"}) and not now.cached


async def test_a_write_that_failed_drops_the_copy(
    store: SqlStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.save("chat:fail", Snapshot("main", 1, "ru"), None)
    assert store.holds("chat:fail")

    async def broken(*_: Any, **__: Any) -> int:
        raise RuntimeError("connection lost after the statement was sent")

    monkeypatch.setattr(conversation_store.one_statement, "write", broken)
    with pytest.raises(RuntimeError):
        await store.save("chat:fail", Snapshot("help", 2, "ru"), 1)
    assert not store.holds("chat:fail")  # written or not: the next load reads the row


async def test_copies_are_bounded_the_least_recent_dropped(
    store: SqlStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversation_store, "CACHE_SIZE", 3)
    for n in range(4):
        await store.save(f"chat:{n}", Snapshot("main", 1, "ru"), None)
    await store.load("chat:1")  # used again: now the most recent
    await store.save("chat:9", Snapshot("main", 1, "ru"), None)
    assert [store.holds(f"chat:{n}") for n in (0, 1, 2, 3, 9)] == [
        False,
        True,
        False,
        True,
        True,
    ]
    loaded = await store.load("chat:0")
    assert loaded == Snapshot("main", 1, "ru") and not loaded.cached


async def test_orm_sessions_read_what_the_store_wrote(
    store: SqlStateStore, db_engine: AsyncEngine
) -> None:
    await store.save("chat:orm", Snapshot("main", 5, "en", {"n": [1]}), None)

    async with session_factory(db_engine)() as session:
        row = (await session.exec(select(ConversationState))).one()

    assert (row.key, row.state, row.counter, row.locale, row.data) == (
        "chat:orm",
        "main",
        5,
        "en",
        {"n": [1]},
    )
    assert isinstance(row.updated_at, datetime)


# ---------------------------------------------------------------------- races


async def test_twenty_coroutines_racing_from_one_counter_exactly_one_wins(
    store: SqlStateStore,
) -> None:
    await store.save("chat:race", Snapshot("main", 1, "ru", {"winner": None}), None)
    everyone_has_read = asyncio.Barrier(20)

    async def contender(n: int) -> bool:
        seen = await store.load("chat:race")
        assert seen is not None
        await everyone_has_read.wait()  # all read counter 1 before anyone writes
        return await store.save(
            "chat:race", Snapshot("next", seen.counter + 1, "ru", {"winner": n}), seen.counter
        )

    results = await asyncio.gather(*(contender(n) for n in range(20)))

    assert sum(results) == 1
    final = await store.load("chat:race")
    assert final is not None
    assert final.counter == 2
    assert final.data["winner"] == results.index(True)


WORKER = """
import asyncio, json, sys

from engine.store import Snapshot
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.settings import DatabaseSettings


async def main(url: str, key: str, name: str, attempts: int) -> None:
    engine = create_engine(DatabaseSettings(database_url=url))
    store = SqlStateStore(engine)
    await store.load(key)  # connected and warm before the start signal
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    won = []
    for _ in range(attempts):
        seen = await store.load(key)
        log = [*seen.data["log"], name]
        if await store.save(key, Snapshot("s", seen.counter + 1, "en", {"log": log}), seen.counter):
            won.append(seen.counter + 1)
    await engine.dispose()
    print(json.dumps(won), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_two_processes_racing_lose_and_double_nothing(
    store: SqlStateStore, migrated_database_url: str
) -> None:
    attempts = 50
    await store.save("chat:procs", Snapshot("s", 0, "en", {"log": []}), None)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            migrated_database_url,
            "chat:procs",
            name,
            str(attempts),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    for worker in workers:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=60)
        assert line.strip() == b"ready", line
    for worker in workers:  # both are connected: start them together
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()

    outputs = [await asyncio.wait_for(worker.communicate(), timeout=120) for worker in workers]

    assert [worker.returncode for worker in workers] == [0, 0]
    won_a, won_b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    total = len(won_a) + len(won_b)
    final = await store.load("chat:procs", fresh=True)
    assert final is not None
    # Every success moved the counter by exactly one, and no two claimed the same step.
    assert final.counter == total
    assert sorted(won_a + won_b) == list(range(1, total + 1))
    # The history built by read-modify-write under CAS lost no one's step.
    assert final.data["log"].count("a") == len(won_a)
    assert final.data["log"].count("b") == len(won_b)
    assert won_a and won_b and total <= 2 * attempts


# ------------------------------------------------------------------- retries


def locked() -> OperationalError:
    return OperationalError("UPDATE ...", {}, sqlite3.OperationalError("database is locked"))


class _PgError(Exception):
    sqlstate = "40P01"


@pytest.fixture
def instant_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(conversation_store, "BACKOFF_BASE_S", 0.0)
    yield


@pytest.mark.parametrize(
    "error",
    [locked(), DBAPIError("UPDATE ...", {}, _PgError("deadlock detected"))],
    ids=["sqlite-locked", "pg-deadlock"],
)
async def test_transient_conflicts_are_retried(error: DBAPIError, instant_backoff: None) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise error
        return "done"

    assert await with_retries(flaky) == "done"
    assert calls == 3


async def test_retries_give_up_after_a_few_attempts(instant_backoff: None) -> None:
    calls = 0

    async def always_locked() -> None:
        nonlocal calls
        calls += 1
        raise locked()

    with pytest.raises(OperationalError):
        await with_retries(always_locked)
    assert calls == conversation_store.ATTEMPTS


async def test_other_errors_are_not_retried(instant_backoff: None) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))

    with pytest.raises(OperationalError):
        await with_retries(broken)
    assert calls == 1


# ------------------------------------------------ the engine the store runs on


@pytest.mark.parametrize(
    "url",
    [
        "mysql+aiomysql://u@h/db",
        "sqlite:///./data/bot.db",
        "postgresql://u@h/db",
        "not a url",
        "sqlite+aiosqlite://host/bot.db",
    ],
)
def test_malformed_database_url_is_rejected(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        DatabaseSettings()


def test_database_url_errors_hide_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql+aiomysql://u:hunter2@h/db")
    with pytest.raises(ValidationError) as caught:
        DatabaseSettings()
    assert "hunter2" not in str(caught.value)


def test_the_default_database_url_is_valid() -> None:
    """The settings skip checking their default (it would import SQLAlchemy into every
    `trt` command); so it is checked here."""
    url = parse_database_url(DEFAULT_DATABASE_URL)
    assert url.drivername == "sqlite+aiosqlite" and url.database == "./data/bot.db"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h:5432/db")
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    monkeypatch.setenv("DB_POOL_PRE_PING", "false")
    settings = DatabaseSettings()
    assert (settings.pool_size, settings.max_overflow, settings.pool_pre_ping) == (3, 0, False)


async def test_sqlite_engine_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.db"
    engine = create_engine(DatabaseSettings(database_url=f"sqlite+aiosqlite:///{path}"))
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
            busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
    finally:
        await engine.dispose()
    assert path.exists()
    assert (mode, busy > 0) == ("wal", True)


# SQLite keeps SQLAlchemy's default pool (5 + 10 overflow); PostgreSQL's is set here.
SQLITE_POOL_LIMIT = 15


async def test_pool_usage_counts_a_checkout_that_had_to_wait(database_url: str) -> None:
    is_pg = database_url.startswith("postgresql")
    settings = DatabaseSettings(database_url=database_url, pool_size=2, max_overflow=1)
    limit = 3 if is_pg else SQLITE_POOL_LIMIT
    engine = create_engine(settings)
    try:
        held = [await engine.connect() for _ in range(limit)]
        full = pool_usage(engine)
        assert (full.checked_out, full.overflow, full.waits) == (limit, limit - full.size, 0)

        async def one_more() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        queued = asyncio.create_task(one_more())
        await asyncio.sleep(0.05)
        assert not queued.done()  # it is waiting for a connection
        await held.pop().close()
        await asyncio.wait_for(queued, timeout=10)
        for conn in held:
            await conn.close()

        after = pool_usage(engine)
        assert (after.waits, after.timeouts, after.checked_out) == (1, 0, 0)
        assert after.wait_seconds >= 0.04
    finally:
        await engine.dispose()


async def test_pool_usage_counts_timeouts(postgres_admin_url: URL) -> None:
    url = postgres_admin_url.render_as_string(hide_password=False)
    settings = DatabaseSettings(database_url=url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    engine = create_engine(settings)
    try:
        async with engine.connect():
            with pytest.raises(PoolTimeout):
                async with engine.connect():
                    pass
        usage = pool_usage(engine)
        assert (usage.size, usage.waits, usage.timeouts, usage.checked_out) == (1, 1, 1, 0)
    finally:
        await engine.dispose()
