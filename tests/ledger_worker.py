"""A separate OS process for the ledger concurrency tests (tests/test_ledger_concurrency.py).

Forked from a warm interpreter (tests/zygote.py) with one end of a multiprocessing Pipe,
`serve_fd`; ``python -m tests.ledger_worker`` speaks the same protocol as
lines on stdin and stdout. The protocol:

1. in: the job, a JSON object: ``url`` (the database), ``now`` (ISO time of the
   worker's fixed clock: required, since time is an input and the test's holds were made
   at a fixed date that the wall clock leaves behind) and ``calls``, a list of
   ``{"op": "hold" | "post" | "void" | "expire_due", ...}`` with the call's arguments
   (``expires_in`` in seconds).
2. out: ``ready``, once the engine is up and its pool holds a connection per call.
3. in: ``go``: every call is fired at once with asyncio.gather.
4. out: the report, a JSON object: ``outcomes`` (one per call, in order: ``{"ok": true,
   "record": {...}}``, ``{"ok": true, "expired": [...]}`` for a sweep, or ``{"ok": false,
   "error": "InsufficientFunds", "message": ...}``) and ``started`` / ``finished``
   (wall-clock seconds around the gather, to show that the processes overlapped) and
   ``deadlocks``: how many deadlock-detected retries storage.retry logged meanwhile.

The barrier makes the processes race: each one is warm before any fires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.ledger import Ledger, LedgerError
from storage.settings import DatabaseSettings


class _DeadlockCounter(logging.Handler):
    """Counts the retries storage.retry logs for a deadlock (PostgreSQL SQLSTATE 40P01)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "deadlock detected" in record.getMessage():
            self.count += 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


async def _call(ledger: Ledger, call: dict[str, Any]) -> dict[str, Any]:
    op = call["op"]
    try:
        if op == "hold":
            record = await ledger.hold(
                call["id"],
                call["account"],
                call["amount"],
                expires_in=timedelta(seconds=call["expires_in"]),
                reason=call.get("reason", "generation"),
            )
        elif op == "post":
            record = await ledger.post(call["id"], call["hold"], call.get("amount"))
        elif op == "void":
            record = await ledger.void(call["id"], call["hold"])
        elif op == "expire_due":
            return {"ok": True, "expired": await ledger.expire_due()}
        else:
            raise ValueError(f"unknown op {op!r}")
    except LedgerError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": exc.message}
    except Exception as exc:  # reported, so the test shows it instead of a bare exit code
        return {"ok": False, "error": type(exc).__name__, "message": str(exc), "unexpected": True}
    return {"ok": True, "record": _jsonable(dataclasses.asdict(record))}


async def _warm(engine: AsyncEngine, connections: int) -> None:
    """Opens `connections` connections at once and returns them to the pool, so the race
    is not spaced out by connection set-up."""

    async def one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(connections)))


class Channel(Protocol):
    """The worker's side of the protocol: lines from the test, lines to it."""

    def receive(self) -> str: ...

    def send(self, line: str) -> None: ...


class Lines:
    """stdin and stdout, for ``python -m tests.ledger_worker``."""

    def receive(self) -> str:
        return sys.stdin.readline()

    def send(self, line: str) -> None:
        print(line, flush=True)


class Piped:
    """One end of a multiprocessing Pipe, for a forked worker."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def receive(self) -> str:
        return str(self.connection.recv())

    def send(self, line: str) -> None:
        self.connection.send(line)


async def main(channel: Channel) -> None:
    job = json.loads(channel.receive())
    calls: list[dict[str, Any]] = job["calls"]
    fixed = datetime.fromisoformat(job["now"])
    settings = DatabaseSettings(
        database_url=job["url"], pool_size=max(1, len(calls)), max_overflow=5, pool_timeout=60
    )
    deadlocks = _DeadlockCounter()
    retry_log = logging.getLogger("storage.retry")
    retry_log.setLevel(logging.DEBUG)
    retry_log.propagate = False
    retry_log.addHandler(deadlocks)
    engine = create_engine(settings)
    try:
        ledger = Ledger(engine, clock=lambda: fixed)
        # SQLite engines keep their default pool (5 + 10 overflow): warm what fits.
        await _warm(engine, min(len(calls), 15) if "sqlite" in job["url"] else len(calls))
        channel.send("ready")
        await asyncio.to_thread(channel.receive)
        started = time.time()
        outcomes = await asyncio.gather(*(_call(ledger, call) for call in calls))
        finished = time.time()
    finally:
        await engine.dispose()
    report = {
        "outcomes": outcomes,
        "started": started,
        "finished": finished,
        "deadlocks": deadlocks.count,
    }
    channel.send(json.dumps(report))


def serve_fd(*, fds: list[int]) -> None:
    """A forked worker's life (tests/zygote.py): the protocol over the Pipe end `fds[0]`."""
    asyncio.run(main(Piped(Connection(fds[0]))))


if __name__ == "__main__":
    asyncio.run(main(Lines()))
