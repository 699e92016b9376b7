"""The ledger under load: hold+post pairs per second, and reads on a big ledger.

Run with ``.venv/bin/python -m bench.ledger_bench`` (or ``make bench-ledger``);
``--quick`` is a small smoke run, ``--help`` lists the knobs. Progress goes to
stderr, the report to stdout.

1. Writes. USERS users are created and funded through the API (``ensure_user``
   then ``Ledger.credit``). Then every worker runs pairs on its own slice of
   those users (no two workers share a user): ``hold(unique id, account,
   100..149 kopecks, expires_in=60 s)`` then ``post(unique id, hold id)`` for the
   full amount. PAIRS timed pairs per row, after a short warm-up per worker that
   also fills the connection pool. Rows: one task; WORKERS asyncio tasks in one
   process; WORKERS tasks spread over PROCS processes (WORKERS/PROCS tasks each;
   a process runs Python on one core at a time); on PostgreSQL also WORKERS tasks
   in one process with DB_POOL_PRE_PING=true (the default is off), to show what the
   ping costs. Backends: SQLite (a file in a temp dir: the app's engine, WAL) and
   PostgreSQL (a scratch database migrated with ``upgrade_to_head``; each ledger
   call is one call of its function, generated from ``storage.ledger_program``).
   Each pair is two ledger transactions. Besides pairs/s: pair latency (hold start to post end), SQL
   statements or ledger function calls per pair (BEGIN, COMMIT and the pool's
   pre-ping not counted),
   CPU per pair of the client process(es) (for SQLite that includes SQLite
   itself) and of the postgres backends serving the bench database (read from
   /proc, so only for a local server), cores busy (ours, and the whole host's:
   the difference is other load on the machine, which makes the numbers noisy),
   and conflict retries (``storage.retry``). The ledger invariants and row
   counts are checked after each backend.
2. pgbench on scratch databases of the same server, -c 16 -j 2 -T 10: the
   built-in TPC-B-like script (``-i -s 1``), and LEDGER_SCRIPT, which makes the
   very function calls Ledger.hold and Ledger.post make, so its tps is the server's
   pairs/s for our SQL with a client that costs next to nothing. Both beside our
   best PostgreSQL row with WORKERS workers and the default pool.
3. Reads at scale: BIG_USERS users and BIG_ENTRIES entries built with bulk SQL
   (``generate_series`` on PostgreSQL, a recursive CTE on SQLite) on a freshly
   migrated database: one credit per user, then hold+post pairs spread over the
   users with a skew (the first 1% of users get ~10% of the pairs), every
   transfer with its entries (summing to zero), its hold row and its idempotency
   key (with the real request hash, so a repeated call replays it: checked),
   account totals equal to the entries (checked with the other invariants).
   Then ``Ledger.balance`` and ``Ledger.statement(limit=20)`` for random user
   accounts (median, p99), the busiest user and the revenue system account, and
   the plans of both queries (``EXPLAIN (ANALYZE, BUFFERS)`` /
   ``EXPLAIN QUERY PLAN``), with the indexes they use.

Every database made here is dropped at the end (PostgreSQL: ``ledger_bench_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.report import log, percentile
from storage import ledger_functions, ledger_plpgsql
from storage.db import create_engine
from storage.ledger import ACCOUNT_TOTALS_SQL, Ledger, balance_query, statement_query
from storage.migrate import upgrade_to_head
from storage.settings import DatabaseSettings
from storage.users import ensure_user

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DB_PREFIX = "ledger_bench"
HOLD_TTL = timedelta(seconds=60)
FUNDS = 1_000_000  # kopecks per user: far more than any run spends
TARGET_PAIRS = 1000  # pairs/s on PostgreSQL with WORKERS workers
TARGET_READ_MS = 100.0

# ----------------------------------------------------------------- plumbing


class _RetryCounter(logging.Handler):
    """Counts the retries `storage.retry` logs (one debug record per retry)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def count_retries() -> _RetryCounter:
    logger = logging.getLogger("storage.retry")
    for handler in list(logger.handlers):
        if isinstance(handler, _RetryCounter):
            return handler
    handler = _RetryCounter()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return handler


class _StatementCounter:
    """Statements sent through SQLAlchemy, but SQLite's BEGIN IMMEDIATE (storage.db sends
    it as SQL; on PostgreSQL the driver's BEGIN is not a statement here either), plus the
    ledger's function calls on PostgreSQL (sent on the driver's connection, which
    SQLAlchemy's events do not see). Counts for the whole process while installed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)
        self._call = ledger_functions.call

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await self._call(*args, **kwargs)

        ledger_functions.call = counted  # type: ignore[assignment]

    def uninstall(self) -> None:
        ledger_functions.call = self._call  # type: ignore[assignment]

    def _seen(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):
            self.count += 1


def app_engine(url: str, **settings: Any) -> AsyncEngine:
    """The app's engine with the app's defaults (DB_POOL_SIZE 20, no pre-ping), but
    what `settings` overrides."""
    return create_engine(DatabaseSettings(database_url=url, **settings))


# ----------------------------------------------------------------- databases


@dataclass(slots=True)
class Database:
    """One scratch database: its SQLAlchemy URL and how to get rid of it."""

    backend: str  # "sqlite" | "postgresql"
    url: str
    name: str
    drop: Callable[[], Awaitable[None]]


def pg_dsn(url: URL) -> str:
    """The asyncpg / libpq form of a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_admin(admin: URL, sql: str) -> None:
    conn = await asyncpg.connect(pg_dsn(admin), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def scratch_postgres(admin: URL, purpose: str) -> Database:
    name = f"{DB_PREFIX}_{os.getpid()}_{purpose}"
    await pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await pg_admin(admin, f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    url = admin.set(database=name).render_as_string(hide_password=False)
    return Database("postgresql", url, name, drop)


def scratch_sqlite(purpose: str) -> Database:
    folder = tempfile.mkdtemp(prefix=f"{DB_PREFIX}-{purpose}-")
    path = Path(folder) / "ledger.db"

    async def drop() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    return Database("sqlite", f"sqlite+aiosqlite:///{path}", str(path), drop)


async def migrate(db: Database) -> None:
    # Alembic runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(upgrade_to_head, db.url)


# ----------------------------------------------------------------- invariants


INVARIANTS: dict[str, str] = {
    "transfers whose entries do not sum to zero": (
        "SELECT COUNT(*) FROM (SELECT transfer_id FROM entries "
        "GROUP BY transfer_id HAVING SUM(amount) <> 0) x"
    ),
    "accounts whose totals differ from their entries": (
        "SELECT COUNT(*) FROM (" + ACCOUNT_TOTALS_SQL + ") a LEFT JOIN ("
        "  SELECT account_id,"
        "    SUM(CASE WHEN pending THEN 0 ELSE amount END) AS posted,"
        "    SUM(CASE WHEN pending THEN amount ELSE 0 END) AS pend"
        "  FROM entries GROUP BY account_id) e ON e.account_id = a.id "
        "WHERE a.credits_posted - a.debits_posted <> COALESCE(e.posted, 0) "
        "   OR a.credits_pending - a.debits_pending <> COALESCE(e.pend, 0)"
    ),
    "user accounts with a negative available balance": (
        "SELECT COUNT(*) FROM accounts WHERE NOT allow_negative "
        "AND credits_posted - debits_posted - debits_pending < 0"
    ),
    "user accounts whose pending debits differ from their open holds": (
        "SELECT COUNT(*) FROM accounts a WHERE NOT a.allow_negative AND a.debits_pending "
        "<> (SELECT COALESCE(SUM(h.amount), 0) FROM holds h "
        "    WHERE h.account_id = a.id AND h.state = 'pending')"
    ),
    "holds not resolved exactly once": (
        "SELECT COUNT(*) FROM holds h WHERE "
        "(h.state = 'pending') <> (h.resolution_id IS NULL) "
        "OR (SELECT COUNT(*) FROM transfers t WHERE t.pending_id = h.id) "
        "   <> CASE WHEN h.state = 'pending' THEN 0 ELSE 1 END "
        "OR COALESCE(h.posted_amount, 0) > h.amount"
    ),
    "entries, holds or transfers referring to a missing row": (
        "SELECT (SELECT COUNT(*) FROM entries e WHERE NOT EXISTS "
        "  (SELECT 1 FROM transfers t WHERE t.id = e.transfer_id) "
        "  OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id)) "
        "+ (SELECT COUNT(*) FROM holds h WHERE NOT EXISTS "
        "  (SELECT 1 FROM transfers t WHERE t.id = h.id) "
        "  OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = h.account_id)) "
        "+ (SELECT COUNT(*) FROM transfers t WHERE "
        "  NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.debit_account_id) "
        "  OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.credit_account_id) "
        "  OR (t.pending_id IS NOT NULL AND NOT EXISTS "
        "      (SELECT 1 FROM transfers p WHERE p.id = t.pending_id))) "
        "+ (SELECT COUNT(*) FROM accounts a WHERE a.user_id IS NOT NULL AND NOT EXISTS "
        "  (SELECT 1 FROM users u WHERE u.id = a.user_id))"
    ),
    "transfers without an idempotency key": (
        "SELECT COUNT(*) FROM transfers t WHERE NOT EXISTS "
        "(SELECT 1 FROM idempotency_keys k WHERE k.scope = 'ledger' AND k.key = t.id)"
    ),
}


async def check_invariants(engine: AsyncEngine, expect: dict[str, int]) -> None:
    """The ledger's invariants over the whole database, and the expected row counts."""
    problems = []
    async with engine.connect() as conn:
        for what, sql in INVARIANTS.items():
            found = await conn.scalar(text(sql))
            if found:
                problems.append(f"{found} {what}")
        for table, want in expect.items():
            where = " WHERE state <> 'posted'" if table == "unposted holds" else ""
            name = "holds" if table == "unposted holds" else table
            got = await conn.scalar(text(f"SELECT COUNT(*) FROM {name}{where}"))
            if got != want:
                problems.append(f"{table}: {got} rows, want {want}")
    if problems:
        raise AssertionError("ledger check failed: " + "; ".join(problems))


# ----------------------------------------------------------------- 1. writes


@dataclass(slots=True)
class PairRun:
    """What one process measured over the timed window."""

    started: float  # time.monotonic(), comparable across processes on one host
    finished: float
    pairs: int
    latencies: list[float]
    cpu: float
    statements: int
    retries: int
    # CPU seconds so far of each server process serving this database, at start and end
    server_start: dict[int, float]
    server_end: dict[int, float]
    host_start: float | None  # busy CPU seconds of the whole host, from /proc/stat
    host_end: float | None


@dataclass(slots=True)
class Row:
    backend: str
    config: str
    workers: int
    procs: int
    pairs: int
    seconds: float
    latencies: list[float]
    cpu: float
    statements: int
    retries: int
    server_cpu: float | None
    host_cpu: float | None

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far (user + system) of each of `pids` that this host can see."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if raw[raw.find("(") + 1 : raw.rfind(")")] != "postgres":
            continue  # not a local server process (a remote server, or a reused pid)
        fields = raw[raw.rfind(")") + 2 :].split()
        found[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return found


def host_busy() -> float | None:
    """Busy CPU seconds of the whole host so far (all but idle and iowait)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def server_pids(engine: AsyncEngine) -> list[int]:
    """The server processes serving this database (PostgreSQL), so the server's CPU can be
    told apart from anything else the server does meanwhile; [] for SQLite."""
    if engine.dialect.name != "postgresql":
        return []
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return [int(pid) for pid in rows.scalars()]


async def _worker(
    ledger: Ledger, accounts: list[int], tag: str, count: int, latencies: list[float]
) -> None:
    clock = time.perf_counter
    for i in range(count):
        account = accounts[i % len(accounts)]
        hold_id = f"{tag}-{i}"
        started = clock()
        await ledger.hold(hold_id, account, 100 + i % 50, expires_in=HOLD_TTL, reason="bench")
        await ledger.post(f"{hold_id}p", hold_id)
        latencies.append(clock() - started)


async def run_pairs(
    url: str,
    slices: list[list[int]],
    counts: list[int],
    tag: str,
    warmup: int,
    gate: Callable[[], None] | None = None,
    profiler: cProfile.Profile | None = None,
    pre_ping: bool = False,
) -> PairRun:
    """One process: len(slices) concurrent workers, worker w runs counts[w] pairs."""
    engine = app_engine(url, DB_POOL_PRE_PING=pre_ping)
    statements = _StatementCounter(engine)
    retries = count_retries()
    ledger = Ledger(engine)
    try:
        await asyncio.gather(
            *(_worker(ledger, s, f"{tag}w{w}u", warmup, []) for w, s in enumerate(slices))
        )
        if gate is not None:
            await asyncio.to_thread(gate)
        latencies: list[float] = []
        statements.count = 0
        retries_before = retries.count
        server_start = process_cpu(await server_pids(engine))
        host_start = host_busy()
        cpu = time.process_time()
        started = time.monotonic()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(
            *(
                _worker(ledger, s, f"{tag}w{w}", n, latencies)
                for w, (s, n) in enumerate(zip(slices, counts, strict=True))
            )
        )
        if profiler is not None:
            profiler.disable()
        finished = time.monotonic()
        cpu = time.process_time() - cpu
        host_end = host_busy()
        executed = statements.count
        server_end = process_cpu(await server_pids(engine))
    finally:
        statements.uninstall()
        await engine.dispose()
    return PairRun(
        started,
        finished,
        sum(counts),
        latencies,
        cpu,
        executed,
        retries.count - retries_before,
        server_start,
        server_end,
        host_start,
        host_end,
    )


def _child(
    url: str,
    slices: list[list[int]],
    counts: list[int],
    tag: str,
    warmup: int,
    barrier: Any,
    results: Any,
    pre_ping: bool,
) -> None:
    """A worker process: its own engine and event loop; starts the clock at the barrier."""
    try:
        run = asyncio.run(
            run_pairs(url, slices, counts, tag, warmup, gate=barrier.wait, pre_ping=pre_ping)
        )
        results.put(("ok", run))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def split(items: list[int], parts: int) -> list[list[int]]:
    return [items[w::parts] for w in range(parts)]


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if w < total % parts else 0) for w in range(parts)]


async def run_config(
    db: Database,
    accounts: list[int],
    workers: int,
    procs: int,
    pairs: int,
    warmup: int,
    tag: str,
    pre_ping: bool = False,
) -> Row:
    """`workers` tasks on disjoint users, in-process (procs == 1) or over `procs` processes."""
    slices = split(accounts, workers)
    counts = shares(pairs, workers)
    if procs == 1:
        run = await run_pairs(db.url, slices, counts, tag, warmup, pre_ping=pre_ping)
        runs = [run]
    else:
        per = workers // procs
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(procs)
        results = ctx.Queue()
        children = [
            ctx.Process(
                target=_child,
                args=(
                    db.url,
                    slices[p * per : (p + 1) * per],
                    counts[p * per : (p + 1) * per],
                    f"{tag}p{p}",
                    warmup,
                    barrier,
                    results,
                    pre_ping,
                ),
                daemon=True,
            )
            for p in range(procs)
        ]
        for child in children:
            child.start()
        runs = []
        errors = []
        try:
            for _ in children:
                status, payload = await asyncio.to_thread(results.get, True, 600)
                if status == "ok":
                    runs.append(payload)
                else:
                    errors.append(payload)
        finally:
            for child in children:
                await asyncio.to_thread(child.join, 30)
                if child.is_alive():
                    child.terminate()
        if errors:
            raise RuntimeError(f"worker process failed: {'; '.join(errors)}")
    first = min(runs, key=lambda r: r.started)
    last = max(runs, key=lambda r: r.finished)
    seconds = last.finished - first.started
    # Every process sees every backend of the database; a backend's window is its
    # earliest start reading to its latest end reading (0 at start: opened meanwhile).
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    for r in runs:
        for pid, used in r.server_start.items():
            starts[pid] = min(used, starts.get(pid, used))
        for pid, used in r.server_end.items():
            ends[pid] = max(used, ends.get(pid, used))
    server_cpu = sum(used - starts.get(pid, 0.0) for pid, used in ends.items()) if ends else None
    host_cpu = (
        last.host_end - first.host_start
        if last.host_end is not None and first.host_start is not None
        else None
    )
    if procs == 1:
        config = "1 task" if workers == 1 else f"{workers} tasks, 1 process"
    else:
        config = f"{workers} tasks, {procs} processes x {workers // procs}"
    if pre_ping:
        config += ", pre-ping"
    return Row(
        backend="SQLite" if db.backend == "sqlite" else "PostgreSQL",
        config=config,
        workers=workers,
        procs=procs,
        pairs=sum(r.pairs for r in runs),
        seconds=seconds,
        latencies=[x for r in runs for x in r.latencies],
        cpu=sum(r.cpu for r in runs),
        statements=sum(r.statements for r in runs),
        retries=sum(r.retries for r in runs),
        server_cpu=server_cpu,
        host_cpu=host_cpu,
    )


async def fund_users(url: str, users: int, concurrency: int = 16) -> list[int]:
    """USERS users through ensure_user, each credited FUNDS; their account ids."""
    engine = app_engine(url)
    ledger = Ledger(engine)
    accounts: dict[int, int] = {}
    queue = list(range(1, users + 1))

    async def one() -> None:
        while queue:
            user_id = queue.pop()
            account = await ensure_user(engine, user_id, language="en")
            await ledger.credit(f"fund-{user_id}", account, FUNDS, source="topups", reason="topup")
            accounts[user_id] = account

    try:
        await asyncio.gather(*(one() for _ in range(concurrency)))
    finally:
        await engine.dispose()
    return [accounts[u] for u in sorted(accounts)]


@dataclass(slots=True)
class WriteConfig:
    workers: int
    procs: int
    pre_ping: bool = False  # DB_POOL_PRE_PING=true: one more round trip per transaction


async def bench_writes(
    db: Database, args: argparse.Namespace, configs: list[WriteConfig]
) -> tuple[list[Row], list[int]]:
    """The rows for `configs` on a fresh database; also the funded accounts."""
    await migrate(db)
    log(f"{db.backend}: funding {args.users} users")
    accounts = await fund_users(db.url, args.users)
    rows = []
    total_pairs = 0
    for n, cfg in enumerate(configs):
        log(f"{db.backend}: {args.pairs} pairs, {cfg.workers} workers in {cfg.procs} process(es)")
        if cfg.pre_ping and db.backend != "postgresql":
            continue
        row = await run_config(
            db, accounts, cfg.workers, cfg.procs, args.pairs, args.warmup, f"r{n}", cfg.pre_ping
        )
        rows.append(row)
        total_pairs += row.pairs + args.warmup * cfg.workers
    engine = app_engine(db.url)
    try:
        await check_invariants(
            engine,
            {
                "holds": total_pairs,
                "unposted holds": 0,
                "transfers": args.users + 2 * total_pairs,
                "entries": 2 * args.users + 6 * total_pairs,
            },
        )
    finally:
        await engine.dispose()
    return rows, accounts


def print_writes(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"1. hold+post pairs: hold(id, account, 100..149, expires_in=60s) then post(id, hold)."
        f"\n   {args.users} users funded via ensure_user+credit; workers own disjoint users; "
        f"{args.pairs} timed pairs per row after {args.warmup} warm-up pairs per worker."
        "\n   1 pair = 2 ledger transactions. p50/p99: one pair, hold start to post end. "
        "calls: SQL statements or ledger function calls per pair, without BEGIN/COMMIT/"
        "pre-ping."
        "\n   PostgreSQL runs each ledger call as one function call; pools are the app's "
        "defaults (20 connections, no pre-ping) but in the row marked pre-ping."
        "\n   CPU ms/pair: client = the Python process(es) (SQLite runs inside them), "
        "server = the postgres backends of the bench database."
        "\n   cores busy: ours = (client + server CPU) / wall time; host = the whole machine "
        "(/proc/stat), so host - ours is anything else running meanwhile."
    )
    header = (
        f"{'backend':<11} {'workers':<28} {'pairs/s':>7} {'txn/s':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'calls':>5} {'client':>7} {'server':>7} {'ours':>5} {'host':>5} "
        f"{'retries':>7}"
    )
    print(f"{'':<75}{'CPU ms/pair':^15} {'cores busy':^11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        server = "-" if r.server_cpu is None else f"{r.server_cpu * 1e3 / r.pairs:.2f}"
        ours = (r.cpu + (r.server_cpu or 0.0)) / r.seconds
        host = "-" if r.host_cpu is None else f"{r.host_cpu / r.seconds:.2f}"
        print(
            f"{r.backend:<11} {r.config:<28} {r.rate:>7.0f} {2 * r.rate:>6.0f} "
            f"{percentile(r.latencies, 0.5) * 1e3:>7.1f} "
            f"{percentile(r.latencies, 0.99) * 1e3:>7.1f} "
            f"{r.statements / r.pairs:>5.1f} {r.cpu * 1e3 / r.pairs:>7.2f} {server:>7} "
            f"{ours:>5.2f} {host:>5} {r.retries:>7}"
        )


# ----------------------------------------------------------------- 2. pgbench


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


# One hold+post pair as pgbench sees it: what Ledger.hold and Ledger.post send on
# PostgreSQL (one function call each, in autocommit), with the values the ledger would
# compute made in SQL. pgbench counts the whole script as one transaction, so its tps is
# pairs/s with a client that costs next to nothing.
_H = "('g' || :client_id::text || '-' || :k::text)"  # the hold's id
_P = "('g' || :client_id::text || '-' || :k::text || 'p')"  # the post's id
_LEDGER_SCRIPT = """\
\\set acct :first + :client_id + :clients * random(0, :per - 1)
\\set amt random(100, 149)
\\set k random(1, 999999999999)
SELECT {HOLD}(p_id => {H}, p_hash => md5('h' || {H}) || md5('x' || {H}), p_now => now(),
  p_account => :acct, p_amount => :amt, p_timeout_at => now() + interval '60 seconds',
  p_destination => :revenue, p_reason => 'bench', p_note => NULL);
SELECT {POST}(p_id => {P}, p_hash => md5('p' || {P}) || md5('y' || {P}), p_now => now(),
  p_hold => {H}, p_amount => NULL, p_expiry_id => 'x:' || {H});
"""
LEDGER_SCRIPT = (
    _LEDGER_SCRIPT.replace("{H}", _H)
    .replace("{P}", _P)
    .replace("{HOLD}", ledger_plpgsql.function_name("hold"))
    .replace("{POST}", ledger_plpgsql.function_name("post"))
)


@dataclass(slots=True)
class PgbenchResult:
    tps: float | None
    summary: list[str]
    error: str | None = None


async def _pgbench(admin: URL, *argv: str) -> tuple[str | None, str]:
    """(error or None, stdout) of one pgbench run against the admin URL's server."""
    binary = find_pgbench()
    if binary is None:
        return "pgbench not found", ""
    env = dict(os.environ)
    if admin.password:
        env["PGPASSWORD"] = str(admin.password)
    conn = ["-h", admin.host or "127.0.0.1", "-p", str(admin.port or 5432)]
    conn += ["-U", admin.username or "postgres"]
    done = await asyncio.to_thread(
        subprocess.run,
        [binary, *conn, *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return f"pgbench {argv[0]} failed: {done.stderr.strip()[-300:]}", done.stdout
    return None, done.stdout


def _pgbench_result(stdout: str) -> PgbenchResult:
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout)
    keep = ("number of transactions actually processed", "latency average", "tps")
    summary = [line for line in stdout.splitlines() if line.startswith(keep)]
    if match is None:
        return PgbenchResult(None, summary, "no tps in pgbench's output")
    return PgbenchResult(float(match.group(1)), summary)


async def run_pgbench(admin: URL, seconds: int, clients: int, threads: int) -> PgbenchResult:
    """The built-in TPC-B-like script on a scratch database initialised with -s 1."""
    if find_pgbench() is None:
        return PgbenchResult(None, [], "pgbench not found")
    db = await scratch_postgres(admin, "pgbench")
    try:
        error, _ = await _pgbench(admin, "-i", "-s", "1", "-q", db.name)
        if error:
            return PgbenchResult(None, [], error)
        run = ["-c", str(clients), "-j", str(threads), "-T", str(seconds), db.name]
        error, out = await _pgbench(admin, *run)
        return PgbenchResult(None, [], error) if error else _pgbench_result(out)
    finally:
        await db.drop()


async def run_pgbench_ledger(
    admin: URL, seconds: int, clients: int, threads: int, users: int
) -> PgbenchResult:
    """LEDGER_SCRIPT on a migrated scratch database with `users` funded users, each
    client on its own users; the ledger invariants are checked afterwards."""
    if find_pgbench() is None:
        return PgbenchResult(None, [], "pgbench not found")
    db = await scratch_postgres(admin, "pgbledger")
    try:
        await migrate(db)
        await seed(db, SeedPlan.of(users, 2 * users))
        engine = app_engine(db.url)
        try:
            system = await system_accounts(engine)
        finally:
            await engine.dispose()
        with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="ledger-") as script:
            script.write(LEDGER_SCRIPT)
            script.flush()
            variables = {
                "first": max(system.values()) + 1,
                "revenue": system["revenue"],
                "clients": clients,
                "per": users // clients,
            }
            defines = [f"-D{name}={value}" for name, value in variables.items()]
            run = ["-n", "-M", "prepared", "-f", script.name, *defines]
            run += ["-c", str(clients), "-j", str(threads), "-T", str(seconds), db.name]
            error, out = await _pgbench(admin, *run)
        if error:
            return PgbenchResult(None, [], error)
        engine = app_engine(db.url)
        try:
            await check_invariants(engine, {"unposted holds": 0})
        finally:
            await engine.dispose()
        return _pgbench_result(out)
    finally:
        await db.drop()


def print_pgbench(
    result: PgbenchResult, ledger: PgbenchResult | None, rows: list[Row], args: argparse.Namespace
) -> None:
    print(
        f"2. pgbench, -c 16 -j 2 -T {args.pgbench_seconds}, on scratch databases of the same server"
    )
    print("   built-in TPC-B-like (-i -s 1; 1 txn = 3 UPDATEs + 1 SELECT + 1 INSERT):")
    if result.tps is None:
        print(f"     not available ({result.error})")
    for line in result.summary:
        print(f"     {line}")
    if ledger is not None:
        print(
            "   the ledger's own SQL for one hold+post pair (LEDGER_SCRIPT, -M prepared; "
            "1 pgbench txn = 1 pair = 2 DB transactions):"
        )
        if ledger.tps is None:
            print(f"     not available ({ledger.error})")
        for line in ledger.summary:
            print(f"     {line}")
    pg = [r for r in rows if r.backend == "PostgreSQL" and r.workers == args.workers]
    if not pg:
        return
    best = max(pg, key=lambda r: r.rate)
    print(
        f"   ours (best {args.workers}-worker PostgreSQL row, {best.config}): "
        f"{best.rate:.0f} pairs/s = {2 * best.rate:.0f} ledger txn/s"
    )
    if result.tps is not None:
        print(
            f"     vs TPC-B: ledger txn/s / pgbench tps = {2 * best.rate / result.tps:.2f}; "
            f"pairs/s / pgbench tps = {best.rate / result.tps:.2f}"
        )
    if ledger is not None and ledger.tps is not None:
        print(
            f"     vs the same SQL from pgbench: our pairs/s / its pairs/s = "
            f"{best.rate / ledger.tps:.2f}"
        )


# ----------------------------------------------------------------- 3. reads at scale


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """users credits, then pairs hold+post; the extra credits make the entry count exact."""

    users: int
    entries: int
    credits: int
    pairs: int

    @staticmethod
    def of(users: int, entries: int) -> SeedPlan:
        if entries < 2 * users or entries % 2:
            raise ValueError("entries must be even and at least 2 per user")
        pairs = (entries - 2 * users) // 6
        extra = (entries - 2 * users - 6 * pairs) // 2
        return SeedPlan(users, entries, users + extra, pairs)


class Dialect:
    """The few spots where the bulk SQL differs between PostgreSQL and SQLite."""

    def __init__(self, name: str, base_epoch: int) -> None:
        self.name = name
        self.base = base_epoch

    def seq(self, count: int) -> str:
        if self.name == "postgresql":
            return f"seq(k) AS (SELECT generate_series(1, {count}))"
        return f"seq(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM seq WHERE k < {count})"

    def ts(self, seconds: str) -> str:
        if self.name == "postgresql":
            return f"to_timestamp({self.base} + ({seconds}))"
        # SQLAlchemy's SQLite storage format for DateTime.
        return (
            f"(strftime('%Y-%m-%d %H:%M:%S', {self.base} + ({seconds}), 'unixepoch') || '.000000')"
        )

    def integer(self, expr: str) -> str:
        if self.name == "postgresql":
            return f"floor({expr})::integer"
        return f"CAST({expr} AS INTEGER)"

    def sha256(self, expr: str) -> str:
        if self.name == "postgresql":
            return f"encode(sha256(convert_to({expr}, 'UTF8')), 'hex')"
        return f"sha256hex({expr})"  # registered on the connection

    def outcome(self, expr: str) -> str:
        if self.name == "postgresql":
            return f"json_build_object('transfer', {expr})"
        return f"json_object('transfer', {expr})"


def seed_sql(
    d: Dialect, plan: SeedPlan, first_account: int, system: dict[str, int]
) -> list[tuple[str, str]]:
    """(label, statement) in order. User u (1..U) owns account first_account + u - 1.

    Time: credit c at base + c s; pair k holds at base + C + 2k and posts 1 s later.
    Entry ids: credit c -> 2c-1 (topups), 2c (user); pair k -> 2C + 6(k-1) + 1..6.
    """
    u, c, p = plan.users, plan.credits, plan.pairs
    topups, revenue = system["topups"], system["revenue"]
    user_account = f"({first_account} + (k - 1) % {u})"
    rnd = "(((k * 2654435761) % 4294967296) / 4294967296.0)"
    pairs_cte = (
        f"WITH RECURSIVE {d.seq(p)}, pairs(k, acct, amt) AS ("
        f"SELECT k, {first_account} + {d.integer(f'{u} * {rnd} * {rnd}')}, 100 + k % 50 "
        "FROM seq)"
    )
    stmts = [
        (
            "users",
            f"WITH RECURSIVE {d.seq(u)} INSERT INTO users "
            "(id, username, language, created_at, referrer_id, is_active) "
            f"SELECT k, 'user' || k, 'ru', {d.ts('0')}, NULL, true FROM seq",
        ),
        (
            "accounts",
            f"WITH RECURSIVE {d.seq(u)} INSERT INTO accounts (id, user_id, code, "
            "allow_negative, debits_pending, debits_posted, credits_pending, credits_posted) "
            f"SELECT {first_account} + k - 1, k, NULL, false, 0, 0, 0, 0 FROM seq",
        ),
        (
            "credit transfers",
            f"WITH RECURSIVE {d.seq(c)} INSERT INTO transfers (id, kind, debit_account_id, "
            "credit_account_id, amount, pending_id, reason, note, created_at) "
            f"SELECT 'seed-c-' || k, 'credit', {topups}, {user_account}, {FUNDS}, NULL, "
            f"'topup', NULL, {d.ts('k')} FROM seq",
        ),
        (
            "hold transfers",
            f"{pairs_cte} INSERT INTO transfers (id, kind, debit_account_id, "
            "credit_account_id, amount, pending_id, reason, note, created_at) "
            f"SELECT 'seed-h-' || k, 'hold', acct, {revenue}, amt, NULL, 'generation', NULL, "
            f"{d.ts(f'{c} + 2 * k')} FROM pairs",
        ),
        (
            "post transfers",
            f"{pairs_cte} INSERT INTO transfers (id, kind, debit_account_id, "
            "credit_account_id, amount, pending_id, reason, note, created_at) "
            f"SELECT 'seed-p-' || k, 'post', acct, {revenue}, amt, 'seed-h-' || k, "
            f"'generation', NULL, {d.ts(f'{c} + 2 * k + 1')} FROM pairs",
        ),
        (
            "holds",
            f"{pairs_cte} INSERT INTO holds (id, account_id, amount, state, timeout_at, "
            "resolved_at, resolution_id, posted_amount) "
            f"SELECT 'seed-h-' || k, acct, amt, 'posted', {d.ts(f'{c} + 2 * k + 60')}, "
            f"{d.ts(f'{c} + 2 * k + 1')}, 'seed-p-' || k, amt FROM pairs",
        ),
        (
            "credit entries",
            f"WITH RECURSIVE {d.seq(c)}, sides(j) AS (VALUES (0), (1)) "
            "INSERT INTO entries (id, transfer_id, account_id, amount, pending, created_at) "
            f"SELECT 2 * (k - 1) + j + 1, 'seed-c-' || k, "
            f"CASE j WHEN 0 THEN {topups} ELSE {user_account} END, "
            f"CASE j WHEN 0 THEN -{FUNDS} ELSE {FUNDS} END, false, {d.ts('k')} "
            "FROM seq CROSS JOIN sides ORDER BY k, j",
        ),
        (
            "hold+post entries",
            # hold: user -a pending, revenue +a pending; post: release (user +a,
            # revenue -a, pending), charge (user -a, revenue +a, posted): _resolve's order.
            f"{pairs_cte}, sides(j) AS (VALUES (0), (1), (2), (3), (4), (5)) "
            "INSERT INTO entries (id, transfer_id, account_id, amount, pending, created_at) "
            f"SELECT {2 * c} + 6 * (k - 1) + j + 1, "
            "CASE WHEN j < 2 THEN 'seed-h-' ELSE 'seed-p-' END || k, "
            f"CASE j % 2 WHEN 0 THEN acct ELSE {revenue} END, "
            "CASE WHEN j IN (0, 3, 4) THEN -amt ELSE amt END, j < 4, "
            f"{d.ts(f'{c} + 2 * k + CASE WHEN j < 2 THEN 0 ELSE 1 END')} "
            "FROM pairs CROSS JOIN sides ORDER BY k, j",
        ),
        (
            "idempotency keys",
            # The request hash of storage.ledger._request_hash, so a repeated call replays.
            "INSERT INTO idempotency_keys (scope, key, request_hash, outcome, created_at) "
            "SELECT 'ledger', id, "
            + d.sha256(
                "CASE kind "
                "WHEN 'credit' THEN '[\"credit\",{\"account\":' || credit_account_id || "
                '\',"amount":\' || amount || \',"reason":"topup","source":"topups"}]\' '
                "WHEN 'hold' THEN '[\"hold\",{\"account\":' || debit_account_id || "
                '\',"amount":\' || amount || \',"dest":"revenue","expires_in":60.0,'
                '"reason":"generation"}]\' '
                'ELSE \'["post",{"amount":null,"hold":"\' || pending_id || \'"}]\' END'
            )
            + f", {d.outcome('id')}, created_at FROM transfers WHERE id LIKE 'seed-%'",
        ),
        (
            "account totals",
            # Every hold is resolved, so the pending totals stay 0.
            "UPDATE accounts SET "
            "credits_posted = s.cp, debits_posted = s.dp FROM ("
            "SELECT account_id, "
            "SUM(CASE WHEN pending OR amount < 0 THEN 0 ELSE amount END) AS cp, "
            "SUM(CASE WHEN pending OR amount > 0 THEN 0 ELSE -amount END) AS dp "
            "FROM entries GROUP BY account_id) AS s WHERE accounts.id = s.account_id",
        ),
    ]
    if d.name == "postgresql":
        stmts += [
            (
                "sequences",
                "SELECT setval(pg_get_serial_sequence('accounts', 'id'), "
                "(SELECT max(id) FROM accounts)), "
                "setval(pg_get_serial_sequence('entries', 'id'), (SELECT max(id) FROM entries))",
            ),
            ("analyze", "ANALYZE"),
        ]
    return stmts


async def system_accounts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT code, id FROM accounts WHERE code IS NOT NULL"))
        ).all()
        return {code: int(account) for code, account in rows}


def _sha256hex(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


async def seed(db: Database, plan: SeedPlan) -> tuple[float, list[tuple[str, float]]]:
    """Builds the big ledger; (seconds, per-step seconds)."""
    engine = app_engine(db.url)
    try:
        system = await system_accounts(engine)
    finally:
        await engine.dispose()
    first = max(system.values()) + 1
    dialect = Dialect(db.backend, int(time.time()) - plan.credits - 2 * plan.pairs - 3600)
    steps = []
    started = time.perf_counter()
    if db.backend == "postgresql":
        conn = await asyncpg.connect(pg_dsn(make_url(db.url)))
        try:
            async with conn.transaction():
                # Bulk load: no per-row foreign key triggers (a superuser may skip them);
                # check_invariants checks every reference afterwards instead.
                with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():  # a savepoint, in case it is refused
                        await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("SET LOCAL synchronous_commit = off")
                for label, sql in seed_sql(dialect, plan, first, system):
                    t0 = time.perf_counter()
                    if label == "analyze":
                        continue  # outside the transaction, below
                    await conn.execute(sql)
                    steps.append((label, time.perf_counter() - t0))
            t0 = time.perf_counter()
            await conn.execute("ANALYZE")
            steps.append(("analyze", time.perf_counter() - t0))
        finally:
            await conn.close()
    else:

        def build() -> None:
            conn = sqlite3.connect(db.name, isolation_level=None)
            try:
                conn.create_function("sha256hex", 1, _sha256hex, deterministic=True)
                conn.execute("BEGIN IMMEDIATE")
                for label, sql in seed_sql(dialect, plan, first, system):
                    t0 = time.perf_counter()
                    conn.execute(sql)
                    steps.append((label, time.perf_counter() - t0))
                conn.execute("COMMIT")
            finally:
                conn.close()

        await asyncio.to_thread(build)
    return time.perf_counter() - started, steps


async def check_replays(engine: AsyncEngine, plan: SeedPlan, first_account: int) -> None:
    """Seeded ids called again with their parameters replay (so the SQL-made request
    hashes and outcomes are the ledger's own), and change nothing."""
    ledger = Ledger(engine)
    k = max(1, plan.pairs // 2)
    hold = await ledger.get_hold(f"seed-h-{k}")
    before = [await ledger.balance(a) for a in (hold.account_id, first_account)]
    again = await ledger.hold(
        hold.id, hold.account_id, hold.amount, expires_in=HOLD_TTL, reason="generation"
    )
    assert again.kind == "hold" and again.amount == hold.amount, again
    posted = await ledger.post(f"seed-p-{k}", hold.id)
    assert posted.kind == "post" and posted.pending_id == hold.id, posted
    credit = await ledger.credit("seed-c-1", first_account, FUNDS, source="topups", reason="topup")
    assert credit.kind == "credit" and credit.credit_account_id == first_account, credit
    after = [await ledger.balance(a) for a in (hold.account_id, first_account)]
    assert before == after, (before, after)


@dataclass(slots=True)
class Timing:
    label: str
    samples: list[float] = field(default_factory=list)
    note: str = ""
    target: bool = True


async def timed(samples: list[float], call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    result = await call
    samples.append(time.perf_counter() - started)
    return result


async def explain(engine: AsyncEngine, query: Any, analyze: bool) -> list[str]:
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
            rows = (await conn.execute(text(prefix + sql))).all()
            return [row[0] for row in rows]
        rows = (await conn.execute(text("EXPLAIN QUERY PLAN " + sql))).all()
        # (id, parent, notused, detail): indent by depth.
        depth: dict[int, int] = {0: 0}
        lines = []
        for node, parent, _, detail in rows:
            depth[node] = depth.get(parent, 0) + 1
            lines.append("  " * (depth[node] - 1) + detail)
        return lines


def indexes_in(plan: list[str]) -> list[str]:
    """The indexes a plan reads, in order of appearance."""
    found: list[str] = []
    patterns = (
        r"(?:Index|Index Only) Scan(?: Backward)? using (\w+)",  # PostgreSQL
        r"Bitmap Index Scan on (\w+)",
        r"USING (?:COVERING )?INDEX (\w+)",  # SQLite
        r"SEARCH (\w+) USING INTEGER PRIMARY KEY",
    )
    for line in plan:
        for pattern in patterns:
            for name in re.findall(pattern, line):
                label = (
                    f"{name} rowid (INTEGER PRIMARY KEY)" if "INTEGER PRIMARY" in pattern else name
                )
                if label not in found:
                    found.append(label)
    return found


async def bench_reads(db: Database, plan: SeedPlan, calls: int) -> dict[str, Any]:
    await migrate(db)
    log(f"{db.backend}: building {plan.users} users, {plan.entries} entries")
    seconds, steps = await seed(db, plan)
    engine = app_engine(db.url)
    try:
        log(f"{db.backend}: built in {seconds:.1f} s; checking invariants")
        t0 = time.perf_counter()
        await check_invariants(
            engine,
            {
                "users": plan.users,
                "entries": plan.entries,
                "holds": plan.pairs,
                "unposted holds": 0,
                "transfers": plan.credits + 2 * plan.pairs,
            },
        )
        check_s = time.perf_counter() - t0
        system = await system_accounts(engine)
        first = max(system.values()) + 1
        await check_replays(engine, plan, first)
        async with engine.connect() as conn:
            busiest, busiest_entries = (
                await conn.execute(
                    text(
                        "SELECT account_id, COUNT(*) FROM entries WHERE account_id >= :first "
                        "GROUP BY account_id ORDER BY COUNT(*) DESC, account_id LIMIT 1"
                    ),
                    {"first": first},
                )
            ).one()
            revenue_entries = await conn.scalar(
                text("SELECT COUNT(*) FROM entries WHERE account_id = :a"),
                {"a": system["revenue"]},
            )
        rng = random.Random(1)
        picks = [first + rng.randrange(plan.users) for _ in range(calls)]
        ledger = Ledger(engine)
        log(f"{db.backend}: timing reads")
        for account in picks[: max(10, calls // 10)]:  # warm-up: pool, caches
            await ledger.balance(account)
            await ledger.statement(account, limit=20)
        balance = Timing("balance(random user)")
        statement = Timing("statement(random user, limit=20)")
        lines = 0
        for account in picks:
            await timed(balance.samples, ledger.balance(account))
            lines += len(await timed(statement.samples, ledger.statement(account, limit=20)))
        statement.note = f"{lines / len(picks):.1f} lines avg"
        heavy = Timing("statement(busiest user, limit=20)", note=f"{busiest_entries} entries")
        for _ in range(max(5, calls // 10)):
            await timed(heavy.samples, ledger.statement(busiest, limit=20))
        revenue = Timing(
            "statement(revenue system account, 20)",
            note=f"{revenue_entries} entries; not user-facing",
            target=False,
        )
        for _ in range(3):
            await timed(revenue.samples, ledger.statement(system["revenue"], limit=20))
        sample = picks[0]
        analyze = db.backend == "postgresql"
        plans = {
            f"statement query, account {sample}": await explain(
                engine, statement_query(sample, 20), analyze
            ),
            f"balance query, account {sample}": await explain(
                engine, balance_query(sample), analyze
            ),
        }
        if statistics.median(revenue.samples) * 1e3 > TARGET_READ_MS:
            plans[f"statement query, revenue account {system['revenue']}"] = await explain(
                engine, statement_query(system["revenue"], 20), analyze
            )
        sql = str(statement_query(sample, 20).compile(dialect=engine.dialect))
    finally:
        await engine.dispose()
    return {
        "seconds": seconds,
        "steps": steps,
        "check_s": check_s,
        "timings": [balance, statement, heavy, revenue],
        "plans": plans,
        "sql": sql,
    }


def print_reads(backend: str, plan: SeedPlan, result: dict[str, Any] | str) -> None:
    name = "SQLite" if backend == "sqlite" else "PostgreSQL"
    if isinstance(result, str):
        print(f"   {name}: not available ({result})")
        return
    steps = ", ".join(f"{label} {s:.1f}" for label, s in result["steps"])
    print(
        f"   {name}: {plan.users} users, {plan.entries} entries ({plan.credits} credits, "
        f"{plan.pairs} hold+post pairs), built in {result['seconds']:.1f} s "
        f"(invariants checked in {result['check_s']:.1f} s; replay checked)"
    )
    print(f"     build steps (s): {steps}")
    header = f"     {'call':<40} {'n':>4} {'median ms':>9} {'p99 ms':>8} {'max ms':>8}  note"
    print(header)
    for t in result["timings"]:
        median = statistics.median(t.samples) * 1e3
        flag = (
            ""
            if not t.target
            else ("  OVER TARGET" if percentile(t.samples, 0.99) * 1e3 > TARGET_READ_MS else "")
        )
        print(
            f"     {t.label:<40} {len(t.samples):>4} {median:>9.2f} "
            f"{percentile(t.samples, 0.99) * 1e3:>8.2f} {max(t.samples) * 1e3:>8.2f}  "
            f"{t.note}{flag}"
        )
    kind = "EXPLAIN (ANALYZE, BUFFERS)" if backend == "postgresql" else "EXPLAIN QUERY PLAN"
    for label, lines in result["plans"].items():
        print(f"     {kind}, {label}: uses {', '.join(indexes_in(lines)) or 'no index'}")
        for line in lines:
            print(f"       {line}")


# ----------------------------------------------------------------- profile


async def profile_writes(db: Database, args: argparse.Namespace, accounts: list[int]) -> str:
    """cProfile of one in-process run with --workers tasks; the report as text."""
    profiler = cProfile.Profile()
    await run_pairs(
        db.url,
        split(accounts, args.workers),
        shares(args.pairs, args.workers),
        "prof",
        args.warmup,
        profiler=profiler,
    )
    out = io.StringIO()
    out.write(
        f"profile: {args.pairs} pairs, {args.workers} tasks in 1 process, {db.backend}; "
        f"top {args.top} by own time\n"
    )
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    out.write(f"profile: top {args.top} by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(args.top)
    return out.getvalue()


# ----------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger_bench",
        description=(
            "Ledger hold+post pairs/s on SQLite and PostgreSQL (1 worker and N workers), "
            "pgbench (TPC-B-like, and the ledger's own SQL) for comparison, and "
            "balance/statement latency on a ledger with 100k users and 1M entries."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    parser.add_argument("--pairs", type=int, help="timed pairs per row (default 3000; quick 200)")
    parser.add_argument(
        "--users", type=int, help="funded users for writes (default 1000; quick 100)"
    )
    parser.add_argument("--workers", type=int, default=16, help="concurrent workers (default 16)")
    parser.add_argument(
        "--procs", type=int, default=2, help="processes for the spread row (default 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="warm-up pairs per worker (default 5)"
    )
    parser.add_argument(
        "--big-users", type=int, help="users for the reads (default 100000; quick 2000)"
    )
    parser.add_argument(
        "--big-entries", type=int, help="entries for the reads (default 1000000; quick 20000)"
    )
    parser.add_argument(
        "--sqlite-big-entries",
        type=int,
        help="entries for the SQLite reads (default: --big-entries)",
    )
    parser.add_argument("--calls", type=int, help="timed read calls (default 200; quick 50)")
    parser.add_argument("--pgbench-seconds", type=int, help="pgbench -T (default 10; quick 3)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG_URL,
        help="PostgreSQL server to make scratch databases on (default TEST_DATABASE_URL or "
        f"{DEFAULT_PG_URL})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument(
        "--parts",
        default="1,2,3",
        help="which parts to run: 1 writes, 2 pgbench, 3 reads (default 1,2,3)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the table, cProfile one in-process PostgreSQL run with --workers tasks",
    )
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    args = parser.parse_args(argv)
    defaults = {
        "pairs": (3000, 200),
        "users": (1000, 100),
        "big_users": (100_000, 2000),
        "big_entries": (1_000_000, 20_000),
        "calls": (200, 50),
        "pgbench_seconds": (10, 3),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        args.parts = {int(part) for part in args.parts.split(",") if part.strip()}
    except ValueError:
        parser.error("--parts takes numbers, e.g. 1,3")
    if not args.parts or not args.parts <= {1, 2, 3}:
        parser.error("--parts takes 1, 2 and/or 3")
    if args.sqlite_big_entries is None:
        args.sqlite_big_entries = args.big_entries
    if args.workers < 1 or args.procs < 1 or args.workers % args.procs:
        parser.error("--workers and --procs must be positive, workers a multiple of procs")
    if args.users < args.workers or args.pairs < 1 or args.calls < 1:
        parser.error("need --users >= --workers, --pairs and --calls >= 1")
    try:
        SeedPlan.of(args.big_users, args.big_entries)
        SeedPlan.of(args.big_users, args.sqlite_big_entries)
    except ValueError as exc:
        parser.error(str(exc))
    return args


async def postgres_reason(admin: URL) -> str | None:
    try:
        await pg_admin(admin, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def server_facts(admin: URL) -> str:
    conn = await asyncpg.connect(pg_dsn(admin), timeout=5)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections')"
        )
    finally:
        await conn.close()
    facts = ", ".join(f"{r['name']}={r['setting']}" for r in settings)
    return f"PostgreSQL {version} ({facts})"


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    admin = make_url(args.pg_url)
    if admin.drivername == "postgresql":
        admin = admin.set(drivername="postgresql+asyncpg")
    pg_down = None if args.no_postgres else await postgres_reason(admin)
    backends = [] if args.no_sqlite else ["sqlite"]
    if not args.no_postgres and pg_down is None:
        backends.append("postgresql")
    configs = [WriteConfig(1, 1), WriteConfig(args.workers, 1)]
    if args.procs > 1:
        configs.append(WriteConfig(args.workers, args.procs))
    configs.append(WriteConfig(args.workers, 1, pre_ping=True))

    made: list[Database] = []

    async def database(backend: str, purpose: str) -> Database:
        db = (
            scratch_sqlite(purpose)
            if backend == "sqlite"
            else await scratch_postgres(admin, purpose)
        )
        made.append(db)
        return db

    rows: list[Row] = []
    profile = ""
    pgbench: PgbenchResult | None = None
    pgbench_ledger: PgbenchResult | None = None
    reads: dict[str, dict[str, Any] | str] = {}
    plans = {
        "sqlite": SeedPlan.of(args.big_users, args.sqlite_big_entries),
        "postgresql": SeedPlan.of(args.big_users, args.big_entries),
    }
    try:
        for backend in backends:
            if 1 in args.parts:
                db = await database(backend, "writes")
                try:
                    written, accounts = await bench_writes(db, args, configs)
                    rows += written
                    if backend == "postgresql" and args.profile:
                        log("postgresql: profiling")
                        profile = await profile_writes(db, args, accounts)
                finally:
                    await db.drop()
            if backend == "postgresql" and 2 in args.parts:
                log("pgbench")
                pgbench = await run_pgbench(admin, args.pgbench_seconds, 16, 2)
                log("pgbench with the ledger's SQL")
                pgbench_ledger = await run_pgbench_ledger(
                    admin, args.pgbench_seconds, 16, 2, args.users
                )
        if 3 in args.parts:
            for backend in backends:
                db = await database(backend, "reads")
                try:
                    reads[backend] = await bench_reads(db, plans[backend], args.calls)
                finally:
                    await db.drop()
    finally:
        for db in made:
            with contextlib.suppress(Exception):
                await db.drop()

    # ---- the report
    print(
        f"ledger bench{' (--quick)' if args.quick else ''}: python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus, SQLAlchemy {sqlalchemy.__version__}, asyncpg "
        f"{asyncpg.__version__}, SQLite {sqlite3.sqlite_version}"
    )
    if "postgresql" in backends:
        print(await server_facts(admin))
    elif not args.no_postgres:
        print(f"PostgreSQL: not available ({pg_down})")
    print()
    if 1 in args.parts:
        print_writes(rows, args)
        pg_rows = [
            r
            for r in rows
            if r.backend == "PostgreSQL"
            and r.workers == args.workers
            and not r.config.endswith("pre-ping")
        ]
        if pg_rows:
            best = max(pg_rows, key=lambda r: r.rate)
            verdict = "meets" if best.rate >= TARGET_PAIRS else "BELOW"
            print(
                f"   target >= {TARGET_PAIRS} pairs/s on PostgreSQL with {args.workers} "
                f"workers: {verdict} ({best.rate:.0f} pairs/s, {best.config})"
            )
        print()
    if "postgresql" in backends and 2 in args.parts:
        print_pgbench(pgbench or PgbenchResult(None, [], "not run"), pgbench_ledger, rows, args)
        print()
    if 3 in args.parts:
        print(
            f"3. reads on a big ledger: Ledger.balance / Ledger.statement(limit=20), one call "
            f"at a time, {args.calls} random user accounts; target < {TARGET_READ_MS:.0f} ms"
        )
        for backend in backends:
            print_reads(backend, plans[backend], reads.get(backend, "not run"))
        print()
    if profile:
        print(profile)
    print(f"total runtime {time.perf_counter() - started:.0f} s")
    return 1 if (pg_down is not None and not args.no_postgres) else 0


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main(args))
    return 130


if __name__ == "__main__":
    sys.exit(cli())
