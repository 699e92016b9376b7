"""One statement, its own transaction: how the per-update hot path reaches the database.

A navigation tap reads once (was the update handled? and its conversation) and writes
once or twice (the conversation's compare-and-set, the update's record). Each of these
is a single statement, atomic by itself, so it needs no BEGIN or COMMIT around it.

On PostgreSQL it runs on the pool in autocommit. On SQLite it runs on the calling
thread (the event loop's), synchronously, through the standard library's driver on a
connection pool of its own: SQLite is a library inside this process, and a point read
or a one-row write takes 10 to 200 µs there, whereas handing the same statement to
aiosqlite's thread and back costs about 1.5 ms of CPU in wake-ups and futures
(measured on one file: 1,730 µs of CPU per SELECT through the async engine, 65 µs
through a synchronous one). The loop is blocked only briefly:

- reads never wait for a writer in WAL mode;
- a write first takes this process's writer queue (`sqlite_writer`), so it never
  waits for a transaction of this process, which holds the queue while it runs;
- a write that meets another process's write lock waits at most LOOP_BUSY_MS on the
  loop, then yields to the loop and tries again, up to the same SQLITE_BUSY_TIMEOUT_MS
  the async engine waits before "database is locked";
- the loop never waits for the disk. Its commits append to the WAL without an fsync
  (synchronous=NORMAL: a commit survives the process being killed, and a power cut
  only once the WAL is synced), and it never runs a checkpoint: every CHECKPOINT_EVERY
  writes one runs on the async engine's thread, which syncs the WAL and the file.
  A blocking fsync on the loop was a tenth of the loop's time under load (py-spy).
  Why the weaker commit is enough here: what is written this way (conversation moves,
  handled update ids, the active flag, a first contact's user and account) is what a
  redelivered update or the next /start rebuilds, and the WAL is one sequence, so the
  ledger's own commits (FULL, on the async engine) sync every earlier write with them:
  a power cut never keeps a charge and loses the move that claimed it, nor the account
  it was charged to.

Writes of several statements without a read between them (a first contact's user and
account, `write_each`) run the same way, in one transaction. Transactions that read
and decide inside (the ledger) stay on the async engine, with full-sync commits.
An in-memory SQLite database has one shared connection and no second way in, so it
takes the async path too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import Executable

from storage.db import (
    SINGLE_STATEMENT,
    SQLITE_BEGIN,
    SQLITE_BUSY_TIMEOUT_MS,
    on_sqlite_begin,
    on_sqlite_connect,
    single_read,
    sqlite_file_url,
    sqlite_writer,
    write_transaction,
)

log = logging.getLogger(__name__)

Params = Mapping[str, Any]
_T = TypeVar("_T")

# How long one attempt may block the event loop on another process's SQLite lock.
LOOP_BUSY_MS = 20
# How long a statement waits in all for another process's lock, as the async engine does.
PATIENCE_S = SQLITE_BUSY_TIMEOUT_MS / 1000
# Writes on the loop between two checkpoints off the loop (SQLite's own default
# checkpoints a WAL of 1,000 pages; a move writes a few).
CHECKPOINT_EVERY = 250
_LOOP_PRAGMAS = (
    f"PRAGMA busy_timeout={LOOP_BUSY_MS}",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA wal_autocheckpoint=0",
)
_CHECKPOINT = text("PRAGMA wal_checkpoint(PASSIVE)")
_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _LoopSqlite:
    """A synchronous engine on the async engine's SQLite file, used on the loop's thread."""

    def __init__(self, url: URL) -> None:
        # Connections are made and used on one thread at a time, but tests run the
        # product from more than one loop (and thread) in one process.
        engine = create_sync_engine(
            url.set(drivername="sqlite"), connect_args={"check_same_thread": False}
        )
        event.listen(engine, "connect", on_sqlite_connect)
        event.listen(engine, "connect", _loop_pragmas)
        event.listen(engine, "begin", on_sqlite_begin)
        self.engine = engine
        self.single = engine.execution_options(**{SQLITE_BEGIN: SINGLE_STATEMENT})
        self.batch = engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        self.writes = 0
        self.checkpoint: asyncio.Task[None] | None = None

    def wrote(self, on: AsyncEngine) -> None:
        """Counts a write; every CHECKPOINT_EVERY, a checkpoint off the loop."""
        self.writes += 1
        if self.writes % CHECKPOINT_EVERY == 0 and (
            self.checkpoint is None or self.checkpoint.done()
        ):
            self.checkpoint = asyncio.get_running_loop().create_task(_checkpoint(on))


def _loop_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    for pragma in _LOOP_PRAGMAS:
        dbapi_connection.execute(pragma)


async def _checkpoint(engine: AsyncEngine) -> None:
    """Copies the WAL into the file and syncs both, in aiosqlite's thread. PASSIVE: it
    waits for no reader or writer, so it never holds anyone up (what it cannot copy
    now, the next one will)."""
    try:
        async with single_read(engine).connect() as conn:
            await conn.execute(_CHECKPOINT)
    except Exception as exc:  # the next one tries again; a WAL only grows meanwhile
        log.warning("SQLite checkpoint failed: %s", type(exc).__name__)


_loop_sqlite: weakref.WeakKeyDictionary[AsyncEngine, _LoopSqlite] = weakref.WeakKeyDictionary()


def _companion(engine: AsyncEngine) -> _LoopSqlite | None:
    """The synchronous way into `engine`'s SQLite file, made on first use; None where
    there is none (PostgreSQL, in-memory SQLite, an engine not from storage.db)."""
    companion = _loop_sqlite.get(engine)
    if companion is None:
        url = sqlite_file_url(engine)
        if url is None:
            return None
        made = companion = _loop_sqlite[engine] = _LoopSqlite(url)
        # Disposing the async engine closes these connections too (both reopen on use).
        event.listen(engine.sync_engine, "engine_disposed", lambda *_: made.engine.dispose())
    return companion


def statement_engines(engine: AsyncEngine) -> list[Engine]:
    """Every engine whose events see the statements sent for `engine`: its own and, on a
    SQLite file, the one single statements run on (to listen for every statement)."""
    companion = _companion(engine)
    return [engine.sync_engine, *([companion.engine] if companion else [])]


def _busy(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _SQLITE_BUSY_CODES


async def _patiently(engine: Engine, work: Callable[[Connection], _T]) -> _T:
    """Runs `work` in one transaction and commits, waiting for another process's lock
    between attempts (on the loop, not in SQLite's busy handler, which would hold the
    loop). A lock met halfway rolls the attempt back whole, so `work` is run again from
    the start."""
    deadline = time.monotonic() + PATIENCE_S
    pause = 0.005
    while True:
        try:
            with engine.connect() as conn:
                found = work(conn)
                conn.commit()
            return found
        except OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


async def read_all(
    engine: AsyncEngine, statement: Executable, params: Params | None = None
) -> list[Row[Any]]:
    """Every row `statement` returns. Read-only screens use this too: on SQLite a read
    through aiosqlite's thread waits for the loop at every hand-off, and under load a
    screen of a few reads took 130 to 200 ms that way while menu taps took 20."""
    companion = _companion(engine)
    if companion is not None:
        return await _patiently(
            companion.single, lambda conn: list(conn.execute(statement, params or {}).all())
        )
    async with single_read(engine).connect() as conn:
        return list((await conn.execute(statement, params or {})).all())


async def read(
    engine: AsyncEngine, statement: Executable, params: Params | None = None
) -> Row[Any] | None:
    """The first row `statement` returns (None if none)."""
    found = await read_all(engine, statement, params)
    return found[0] if found else None


async def write(
    engine: AsyncEngine, statement: Executable, params: Params | Sequence[Params]
) -> int:
    """Runs a write (with a list of parameter sets: one transaction for all of them) and
    returns the rows it changed."""
    many = not isinstance(params, Mapping)
    companion = _companion(engine)
    if companion is not None:
        async with sqlite_writer(engine):
            on = companion.batch if many else companion.single
            changed = await _patiently(
                on, lambda conn: int(conn.execute(statement, params).rowcount)
            )
        companion.wrote(engine)
        return changed
    if many:
        async with write_transaction(engine) as conn:
            return int((await conn.execute(statement, params)).rowcount or 0)
    async with sqlite_writer(engine), single_read(engine).connect() as conn:
        result = await conn.execute(statement, params)
        await conn.commit()
    return int(result.rowcount or 0)


async def write_each(
    engine: AsyncEngine, steps: Sequence[tuple[Executable, Params]]
) -> list[Row[Any]]:
    """Runs several writes in one transaction: all of them or none; the rows the last
    one returns (an INSERT ... RETURNING). For a few short statements that need no read
    in between (a first contact's user and account), on SQLite on the loop like a
    single write, with the same writer queue and patience."""

    def run(conn: Connection) -> list[Row[Any]]:
        for statement, params in steps[:-1]:
            conn.execute(statement, params)
        last, params = steps[-1]
        result = conn.execute(last, params)
        return list(result.all()) if result.returns_rows else []

    companion = _companion(engine)
    if companion is not None:
        async with sqlite_writer(engine):
            found = await _patiently(companion.batch, run)
        companion.wrote(engine)
        return found
    async with write_transaction(engine) as conn:
        return await conn.run_sync(run)
