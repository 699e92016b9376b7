"""Memory of `trt serve` under a steady load: peak RSS, and growth over a soak (issue 14).

Run with ``.venv/bin/python -m bench.soak --minutes 10 --store sqlite`` (or ``make
bench-soak``); ``--help`` lists the knobs. Progress goes to stderr, the report to stdout.

The bot is started as `bench.service_bench` starts it (its fake Bot API, `trt migrate`,
`trt serve` with ENVIRONMENT=production, the same settings, the same simulated users who
tap only navigation and check every screen they get), then driven for MINUTES by
CONCURRENCY workers, each running one session after another until the time is up. A
session is either a NEW user (a user id never seen before: /start, then CLICKS taps) or,
with probability RETURNING, a user seen before and not busy, who goes on tapping the
screen they were left on. So the number of distinct users grows all along, as per-user
state is what could grow without bound in a serving process.

Every SAMPLE seconds the bot process's VmRSS (and RssAnon) is read from
/proc/<pid>/status. The report is the table of samples, the peak (VmHWM), the RSS at the
end of the warm-up (the first WARMUP minutes, default a fifth of the run) and at the end,
the growth per minute over the second half of the run (the least-squares slope of its
samples, less sensitive to one sample than the two ends) and the verdict line
"growth per 10 min: X MB".

Checks, so a broken bot cannot look lean: every webhook answer is 200, every screen is the
one the tap leads to (`bench.service_bench.Driver`), no Bot API call failed, the Bot API
got exactly one sendMessage per new user and one answerCallbackQuery and one
editMessageText per tap, and no line at level error or above in the bot's log.

To see what grows, give the bot tracemalloc and a way to dump snapshots (see the
``--env`` option, e.g. ``--env PYTHONTRACEMALLOC=1 --env PYTHONPATH=/tmp/dir`` with a
sitecustomize.py there); ``--keep-logs`` keeps the work folder, whose path is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy.engine import make_url

from bench.report import log
from bench.service_bench import (
    DEFAULT_PG_URL,
    POST_TIMEOUT_S,
    TRT,
    WEBHOOK_PATH,
    Bench,
    BenchError,
    BotProcess,
    Context,
    Driver,
    Memory,
    Options,
    Postgres,
    ServerCpu,
    SimUser,
    free_port,
    memory_of,
    postgres_reason,
    release,
    run_command,
    run_to_exit_code,
    spawn,
    stop,
    until_healthy,
    until_webhook,
)
from engine.local.bot_api_server import FakeBotAPI

STORES = ("memory", "sqlite", "postgresql")
FIRST_USER_ID = 20_000_000
# Bot API calls a simulated user's updates may make; getMe once, early (aiogram keeps it).
EXPECTED_METHODS = frozenset({"sendMessage", "answerCallbackQuery", "editMessageText", "getMe"})


@dataclass(slots=True)
class SoakOptions:
    minutes: float
    store: str
    concurrency: int
    clicks: int
    returning: float
    sample_s: float
    warmup_minutes: float
    seed: int
    env: dict[str, str]
    keep_logs: bool
    pg_url: str


@dataclass(frozen=True, slots=True)
class Reading:
    seconds: float  # since the load began
    updates: int
    users: int
    memory: Memory


@dataclass(slots=True)
class Workload:
    """The steady mix of new and returning users; counts what it posted."""

    driver: Driver
    clicks: int
    returning: float
    rng: random.Random
    seed: int
    users: list[SimUser] = field(default_factory=list)
    idle: list[SimUser] = field(default_factory=list)  # seen, not in a session now
    updates: int = 0
    starts: int = 0
    taps: int = 0
    latencies: list[float] = field(default_factory=list)

    def _new_user(self) -> SimUser:
        i = len(self.users)
        user = SimUser(FIRST_USER_ID + i, random.Random(f"{self.seed}:{i}"))
        self.users.append(user)
        return user

    async def session(self) -> None:
        if self.idle and self.rng.random() < self.returning:
            k = self.rng.randrange(len(self.idle))
            self.idle[k], self.idle[-1] = self.idle[-1], self.idle[k]
            user = self.idle.pop()
        else:
            user = self._new_user()
            await self.driver.start(user, self.latencies)
            self.starts += 1
            self.updates += 1
        await self.driver.taps(user, self.clicks, self.latencies)
        self.taps += self.clicks
        self.updates += self.clicks
        self.idle.append(user)
        # Only the latest latencies are kept (the driver's memory is not the point).
        if len(self.latencies) > 100_000:
            del self.latencies[:50_000]

    async def run(self, concurrency: int, until: float) -> None:
        async def worker() -> None:
            while time.perf_counter() < until:
                await self.session()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
        except ExceptionGroup as group_error:
            raise group_error.exceptions[0] from None


class CallAudit:
    """The fake API's calls, checked and counted window by window, then forgotten (so the
    driver's memory does not grow with the run)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.counts: collections.Counter[str] = collections.Counter()
        self.log_at = ctx.bot.log_size()

    def take(self) -> None:
        api = self.ctx.api
        calls = list(api.calls)
        del api.calls[: len(calls)]
        api.answered_callbacks.clear()
        failed = [c for c in calls if c.failed]
        if failed:
            raise BenchError(f"{len(failed)} Bot API calls failed: {failed[0].result}")
        answers = [c for c in calls if c.method == "answerCallbackQuery"]
        noticed = [c for c in answers if c.params.get("text") or c.params.get("show_alert")]
        if noticed:
            raise BenchError(f"a callback answer carried a notice: {noticed[0].params}")
        self.counts.update(c.method for c in calls)
        unexpected = set(self.counts) - EXPECTED_METHODS
        if unexpected:
            raise BenchError(f"unexpected Bot API calls: {sorted(unexpected)}")
        end = self.ctx.bot.log_size()
        self.ctx.read_log(self.log_at, end)  # BenchError on an error line
        self.log_at = end

    def check_totals(self, work: Workload) -> None:
        want = {
            "sendMessage": work.starts,
            "answerCallbackQuery": work.taps,
            "editMessageText": work.taps,
        }
        got = {m: self.counts[m] for m in want}
        if got != want:
            raise BenchError(f"Bot API calls {got}, want {want}")


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y); None under two distinct x."""
    try:
        return statistics.linear_regression(*zip(*points, strict=True)).slope
    except (statistics.StatisticsError, TypeError):  # TypeError: no points at all
        return None


async def sampler(
    bot: BotProcess,
    work: Workload,
    audit: CallAudit,
    began: float,
    until: float,
    every: float,
    readings: list[Reading],
) -> None:
    def read() -> None:
        memory = memory_of(bot.pid)
        if memory is None:
            raise BenchError(f"the bot (pid {bot.pid}) is gone:\n{bot.log_tail()}")
        reading = Reading(time.perf_counter() - began, work.updates, len(work.users), memory)
        readings.append(reading)
        log(
            f"{reading.seconds / 60:5.1f} min: {reading.updates} updates, "
            f"{reading.users} users, RSS {memory.rss:.1f} MB"
        )

    read()
    while True:
        now = time.perf_counter()
        if now >= until:
            return
        await asyncio.sleep(min(every, until - now))
        audit.take()
        read()


def report(opts: SoakOptions, readings: list[Reading], work: Workload, pid: int) -> None:
    total = readings[-1].seconds
    warmup_s = opts.warmup_minutes * 60
    print(
        f"soak: trt serve, {opts.store} store, {opts.minutes:g} min, concurrency "
        f"{opts.concurrency}; sessions of /start + {opts.clicks} taps (new user) or "
        f"{opts.clicks} taps (returning user, p={opts.returning:g}); seed {opts.seed}; "
        f"bot pid {pid}"
    )
    if opts.env:
        print(f"settings given with --env: {' '.join(f'{k}={v}' for k, v in opts.env.items())}")
    print(
        f"{work.updates} updates ({work.starts} /start, {work.taps} taps), {len(work.users)} "
        f"distinct users, {work.updates / total:.0f} updates/s; every one checked"
    )
    print()
    print(f"{'minute':>7} {'updates':>9} {'users':>7} {'RSS MB':>8} {'anon MB':>8}")
    for r in readings:
        print(
            f"{r.seconds / 60:>7.2f} {r.updates:>9} {r.users:>7} {r.memory.rss:>8.1f} "
            f"{r.memory.anon:>8.1f}"
        )
    print()
    after_warmup = next((r for r in readings if r.seconds >= warmup_s), readings[-1])
    end = readings[-1]
    half = [(r.seconds / 60, r.memory.rss) for r in readings if r.seconds >= total / 2]
    per_min = slope(half)
    half_anon = slope([(r.seconds / 60, r.memory.anon) for r in readings if r.seconds >= total / 2])
    print(f"peak RSS (VmHWM): {max(r.memory.hwm for r in readings):.1f} MB")
    print(
        f"RSS after warm-up ({after_warmup.seconds / 60:.1f} min, {after_warmup.updates} "
        f"updates): {after_warmup.memory.rss:.1f} MB"
    )
    print(
        f"RSS at end ({end.seconds / 60:.1f} min, {end.updates} updates): {end.memory.rss:.1f} MB"
    )
    grew = end.memory.rss - after_warmup.memory.rss
    new_users = end.users - after_warmup.users
    print(
        f"after warm-up: {grew:+.1f} MB over {end.updates - after_warmup.updates} updates and "
        f"{new_users} new users"
        + (f" ({grew * 1024 * 1024 / new_users:.0f} bytes per new user)" if new_users else "")
    )
    if per_min is None:
        print("growth per minute over the second half: not enough samples")
        print("growth per 10 min: not measured")
        return
    print(
        f"growth per minute over the second half ({len(half)} samples, least squares): "
        f"{per_min:+.2f} MB/min (anon {half_anon or 0.0:+.2f})"
    )
    print(f"growth per 10 min: {per_min * 10:.1f} MB")


async def soak(opts: SoakOptions, pg_holder: list[Postgres]) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    pg: Postgres | None = None
    if opts.store == "postgresql":
        admin = make_url(opts.pg_url)
        if admin.drivername == "postgresql":
            admin = admin.set(drivername="postgresql+asyncpg")
        if (down := await postgres_reason(admin)) is not None:
            print(f"postgresql: not available ({down})")
            return 1
        pg = Postgres(admin)
        await pg.open()
        pg_holder.append(pg)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    bench = Bench(
        Options(
            users=0,
            clicks=opts.clicks,
            concurrency=[opts.concurrency],
            only=[opts.store],
            rounds=1,
            warmup=0,
            seed=opts.seed,
            profile=None,
            top=0,
            keep_logs=opts.keep_logs,
            wait_idle=0.0,
            pg_url=opts.pg_url,
            quick=False,
            env=opts.env,
        ),
        workdir,
        pg,
    )
    failed = False
    db_name = ""
    try:
        async with (
            FakeBotAPI() as api,
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=opts.concurrency + 4),
            ) as http,
        ):
            if pg is not None:
                db_name = await pg.create()
                database_url = pg.url(db_name)
            else:
                database_url = f"sqlite+aiosqlite:///{workdir / 'bot.db'}"
            port = free_port()
            env = bench.env_for(opts.store, api, port, database_url)
            log(f"{opts.store}: trt migrate")
            await run_command([TRT, "migrate"], env, workdir)
            bot = await spawn(
                opts.store,
                bench.argv_for(opts.store, None),
                env,
                workdir,
                workdir / "bot.log",
                port,
            )
            try:
                await until_healthy(bot, http)
                await until_webhook(bot, api)
                log(f"{opts.store}: trt serve is up, pid {bot.pid}")
                api.clear()
                driver = Driver(api, http, bot.base + WEBHOOK_PATH, bench.trt_menu, opts.store)
                ctx = Context(bot, api, ServerCpu(), None, "")
                work = Workload(
                    driver, opts.clicks, opts.returning, random.Random(opts.seed), opts.seed
                )
                audit = CallAudit(ctx)
                readings: list[Reading] = []
                began = time.perf_counter()
                until = began + opts.minutes * 60
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(work.run(opts.concurrency, until))
                        group.create_task(
                            sampler(bot, work, audit, began, until, opts.sample_s, readings)
                        )
                except ExceptionGroup as group_error:  # the first failure says what went wrong
                    raise group_error.exceptions[0] from None
                await asyncio.sleep(1.0)  # the last updates' calls
                audit.take()
                memory = memory_of(bot.pid)
                if memory is not None:
                    readings.append(
                        Reading(time.perf_counter() - began, work.updates, len(work.users), memory)
                    )
                audit.check_totals(work)
                pid = bot.pid
            finally:
                await stop(bot)
    except BaseException:
        failed = True
        raise
    finally:
        await release(pg, workdir, keep=failed or opts.keep_logs)
        if not (failed or opts.keep_logs):
            shutil.rmtree(workdir, ignore_errors=True)
    report(opts, readings, work, pid)
    return 0


def parse_args(argv: list[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="trt serve's memory under a steady load of new and returning users: "
        "RSS sampled from /proc, growth after warm-up.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--store", choices=STORES, default="sqlite", help="default sqlite")
    parser.add_argument("--concurrency", type=int, default=8, help="workers (default 8)")
    parser.add_argument("--clicks", type=int, default=5, help="taps per session (default 5)")
    parser.add_argument(
        "--returning",
        type=float,
        default=0.25,
        help="chance a session is a returning user's (default 0.25); the rest are new users",
    )
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, help="warm-up minutes, for 'RSS after warm-up' (default a fifth)"
    )
    parser.add_argument("--seed", type=int, default=14, help="the users' random seed")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for trt serve and trt migrate (a trt setting, or e.g. "
        "PYTHONTRACEMALLOC=1); repeatable",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    if args.minutes <= 0 or args.concurrency < 1 or args.clicks < 1 or args.sample <= 0:
        parser.error("--minutes, --concurrency, --clicks and --sample must be positive")
    if not 0 <= args.returning < 1:
        parser.error("--returning must be in [0, 1)")
    return SoakOptions(
        minutes=args.minutes,
        store=args.store,
        concurrency=args.concurrency,
        clicks=args.clicks,
        returning=args.returning,
        sample_s=args.sample,
        warmup_minutes=args.warmup if args.warmup is not None else args.minutes / 5,
        seed=args.seed,
        env=dict(item.split("=", 1) for item in args.env),
        keep_logs=args.keep_logs,
        pg_url=os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL),
    )


def cli(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    return run_to_exit_code(lambda pg_holder: soak(opts, pg_holder))


if __name__ == "__main__":
    sys.exit(cli())
