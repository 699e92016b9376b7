"""The database engine: one per process, shared by every store.

SQLite and PostgreSQL need different care. SQLite serialises writers, so it
runs in WAL mode (readers never block the writer) with a busy timeout (a
writer waits for the lock instead of failing at once). PostgreSQL gets a
bounded pool so a burst of updates queues for connections instead of
exhausting the server's connection slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.dml import Insert

from storage.settings import DatabaseSettings, parse_database_url

if TYPE_CHECKING:  # imported where used: `trt migrate` at head needs neither (issue 14)
    from sqlmodel.ext.asyncio.session import AsyncSession

# How long a SQLite writer waits for another writer's lock before the driver
# reports "database is locked"; the store retries a few times on top of it.
SQLITE_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A snapshot of the connection pool, for metrics.

    size:         connections the pool keeps open at rest (pool_size).
    checked_out:  connections in use right now.
    overflow:     connections open beyond `size` right now (0 when none).
    waits:        checkouts, since the engine was created, that found every
                  connection busy and the overflow budget spent, and so had to
                  queue for a connection (up to pool_timeout). A growing count
                  means the pool is too small for the load.
    wait_seconds: total time those queued checkouts spent waiting.
    timeouts:     queued checkouts that gave up after pool_timeout.
    """

    size: int
    checked_out: int
    overflow: int
    waits: int
    wait_seconds: float
    timeouts: int


class _WaitStats:
    __slots__ = ("timeouts", "wait_seconds", "waits")

    def __init__(self) -> None:
        self.waits = 0
        self.wait_seconds = 0.0
        self.timeouts = 0


class InstrumentedPool(AsyncAdaptedQueuePool):
    """A queue pool that counts the checkouts that had to wait.

    Pool events fire only after a connection is handed out, so they cannot
    tell a queued checkout from an instant one; the check has to happen on
    the way in. A checkout queues exactly when every connection is checked
    out and the overflow budget is spent.
    """

    def __init__(self, creator: Any, *, max_overflow: int = 10, **kw: Any) -> None:
        super().__init__(creator, max_overflow=max_overflow, **kw)
        self._overflow_budget = max_overflow
        self.wait_stats = _WaitStats()

    def _must_wait(self) -> bool:
        if self.size() == 0 or self._overflow_budget < 0:
            return False  # an unbounded pool never queues
        return self.checkedout() >= self.size() + self._overflow_budget

    def connect(self) -> PoolProxiedConnection:
        if not self._must_wait():
            return super().connect()
        stats = self.wait_stats
        stats.waits += 1
        started = time.perf_counter()
        try:
            return super().connect()
        except PoolTimeout:
            stats.timeouts += 1
            raise
        finally:
            stats.wait_seconds += time.perf_counter() - started

    def recreate(self) -> InstrumentedPool:
        # engine.dispose() swaps in a fresh pool; keep counting across it.
        fresh = super().recreate()
        assert isinstance(fresh, InstrumentedPool)
        fresh.wait_stats = self.wait_stats
        return fresh


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def on_sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # The driver's own implicit BEGIN is always DEFERRED; turn it off so the
    # begin hook below decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def on_sqlite_begin(connection: Connection) -> None:
    """BEGIN IMMEDIATE where asked (execution option `sqlite_begin`): the ledger reads a
    balance and then writes it, and a DEFERRED reader cannot upgrade to a writer once
    another has written, which SQLite reports as "database is locked" at once. No BEGIN
    at all for SINGLE_STATEMENT: one statement is atomic and a consistent snapshot by
    itself, and the hot path skips a statement (a hand-off to aiosqlite's thread)."""
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    if mode != SINGLE_STATEMENT:
        connection.exec_driver_sql(f"BEGIN {mode}")


SQLITE_BEGIN = "sqlite_begin"
# A connection that runs exactly one statement, its own transaction (a SELECT no second
# statement must share a snapshot with, or one write): `single_read`, `single_write`.
SINGLE_STATEMENT = "single statement"

# The engine as each transaction kind wants it, made once per engine and kind
# (execution_options costs ~20 µs a call, too much for every write).
_variants: weakref.WeakKeyDictionary[AsyncEngine, dict[str, AsyncEngine]] = (
    weakref.WeakKeyDictionary()
)


def _variant(engine: AsyncEngine, mode: str) -> AsyncEngine:
    made = _variants.setdefault(engine, {})
    if mode not in made:
        if mode == SINGLE_STATEMENT and engine.dialect.name != "sqlite":
            # PostgreSQL: autocommit, a client-side flag with asyncpg (no BEGIN/COMMIT).
            made[mode] = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            made[mode] = engine.execution_options(**{SQLITE_BEGIN: mode})
    return made[mode]


def single_read(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for connections that run one statement each: on SQLite no BEGIN is sent
    (the statement is its own transaction); on PostgreSQL autocommit (no BEGIN/COMMIT
    trips). storage.one_statement runs such statements; writes there take `sqlite_writer`."""
    return _variant(engine, SINGLE_STATEMENT)


# One lock per engine and event loop: asyncio locks belong to a loop, and tests run
# one engine from more than one.
_writer_locks: weakref.WeakKeyDictionary[
    Engine, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def sqlite_writer(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[object]:
    """Hold around a SQLite write transaction (BEGIN IMMEDIATE): this process's writers
    then take turns in arrival order. SQLite's own busy handler polls with sleeps that
    grow to 100 ms, so among 16 concurrent writers some lost every race for seconds
    (ledger benchmark: p99 2.6 to 3.2 s). Writers of other processes still meet at
    SQLite's lock. Nothing on PostgreSQL, whose row locks queue writers themselves."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    per_loop = _writer_locks.setdefault(engine.sync_engine, weakref.WeakKeyDictionary())
    return per_loop.setdefault(asyncio.get_running_loop(), asyncio.Lock())


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """The one way to write: a transaction that is a writer from its first statement.

    On SQLite a DEFERRED transaction that reads and then writes must upgrade its lock,
    and SQLite refuses an upgrade at once ("database is locked", busy_timeout does not
    apply) when another connection has written meanwhile: concurrent first contacts
    failed that way. BEGIN IMMEDIATE takes the write lock up front, and this process's
    writers queue on `sqlite_writer` instead of polling SQLite's lock. On PostgreSQL it
    is a plain transaction."""
    async with sqlite_writer(engine), _variant(engine, "IMMEDIATE").begin() as conn:
        yield conn


# The SQLite files of the engines made here: storage.one_statement opens them a second
# way, synchronously, for single statements.
_sqlite_files: weakref.WeakKeyDictionary[AsyncEngine, URL] = weakref.WeakKeyDictionary()


def sqlite_file_url(engine: AsyncEngine) -> URL | None:
    """The URL of the SQLite file `engine` (from `create_engine`) is on; None otherwise."""
    return _sqlite_files.get(engine)


def create_engine(settings: DatabaseSettings | None = None) -> AsyncEngine:
    """The process-wide engine for `settings` (the environment when omitted)."""
    settings = settings or DatabaseSettings()
    url = parse_database_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is None:
            # In-memory: one shared connection is the only way to see one database.
            return create_async_engine(url, echo=settings.echo)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=settings.echo, poolclass=InstrumentedPool)
        _sqlite_files[engine] = url
        event.listen(engine.sync_engine, "connect", on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", on_sqlite_begin)
        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        poolclass=InstrumentedPool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=settings.pool_pre_ping,
        pool_recycle=settings.pool_recycle,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for ORM work off the hot path (the conversation store uses Core).

    expire_on_commit=False because async code cannot lazily reload attributes
    after a commit; objects stay readable once their session is done.
    """
    from sqlmodel.ext.asyncio.session import AsyncSession

    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def pool_usage(engine: AsyncEngine) -> PoolUsage:
    """Read the pool's gauges and wait counters; cheap, no I/O."""
    pool = engine.sync_engine.pool
    if not isinstance(pool, AsyncAdaptedQueuePool):
        return PoolUsage(size=0, checked_out=0, overflow=0, waits=0, wait_seconds=0.0, timeouts=0)
    stats = pool.wait_stats if isinstance(pool, InstrumentedPool) else _WaitStats()
    return PoolUsage(
        size=pool.size(),
        checked_out=pool.checkedout(),
        overflow=max(0, pool.overflow()),
        waits=stats.waits,
        wait_seconds=stats.wait_seconds,
        timeouts=stats.timeouts,
    )


def insert_if_absent(dialect: str, table: Table, key: list[str], values: dict[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING: checked by the database, so racing callers
    cannot both insert, and neither fails."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    raise ValueError(f"no insert-if-absent for the {dialect!r} dialect")
