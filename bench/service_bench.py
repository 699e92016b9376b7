"""One update over the whole webhook path: `trt serve` against a plain aiogram bot (issue 14).

Run with ``.venv/bin/python -m bench.service_bench`` (or ``make bench-service``);
``--quick`` is a small smoke run, ``--help`` lists the knobs. Progress goes to stderr,
the report to stdout.

What is measured: the cost of one Telegram update from the webhook POST to its answer,
through real processes and real HTTP, for

* ``floor``: a plain aiogram 3 webhook bot written for this benchmark
  (`bench.plain_bot`: SimpleRequestHandler with the secret token, setup_application,
  MemoryStorage, the menu in a dict), the cheapest correct way to serve a menu;
* ``memory``: `trt serve` with STATE_STORE=memory (conversations in the process; the
  rest of the product, processed update ids included, in a migrated SQLite file);
* ``sqlite``: `trt serve` on SQLite (DATABASE_URL=sqlite+aiosqlite:///<tmp>/bot.db);
* ``postgresql``: `trt serve` on a database created for the run
  (``bench_service_<random>`` on TEST_DATABASE_URL's server, dropped at the end).

How: the driver (this process) runs the fake Telegram Bot API
(`engine.local.bot_api_server.FakeBotAPI`), starts each bot as its own process pointed at
it (TELEGRAM_API_BASE), cold, from the shell's command (``.venv/bin/trt serve``,
``python -m bench.plain_bot``), with ENVIRONMENT=production (JSON log lines at INFO, to a
file) and waits for its first 200 from /healthz (the start-up time) and its setWebhook.
For the SQL configurations ``trt migrate`` runs first and is timed, and once more on the
database already at head. Then USERS simulated users, with at most CONCURRENCY webhook
requests in flight: every user sends /start (phase 1), then every user makes CLICKS taps
(phase 2). Each update is POSTed to the bot's webhook with the secret header; a user's
next update is made only once the answer to the previous one has returned, and its
callback data is read from the keyboard of the chat's screen in the fake API (the message
the bot sent and then edited), as a person taps the screen they see. Only pure navigation
is tapped: in flows.yaml a button with `to:` and no `action:`, an option of a list whose
`options:` have no action, Back and Main menu, and never into a state that waits for
input; on the floor, every button. Which one is chosen by a random generator seeded per
user (same seed for every bot, so the trt configurations walk exactly the same paths).

Measured over each timed phase: updates/s, latency of the webhook POST (p50/p95/p99), CPU
of the bot process (utime+stime from /proc/<pid>/stat), for PostgreSQL also the server's
CPU (every process of user postgres, plus the postmaster's cutime+cstime for backends
that exited), transactions (pg_stat_database xact_commit+xact_rollback) and sessions
opened (pg_stat_database.sessions: pool churn) in the run's database, Bot API calls; and
per process the peak RSS (VmHWM). PostgreSQL reports a backend's statistics at most every
10 s while it is idle, so the driver waits SETTLE_S seconds before each read of them; and
after the runs it reads them over BACKGROUND_S idle seconds, so what the job poller does
meanwhile (a few statements every POLL_INTERVAL_S) can be told from what updates cost.
Navigation never reaches KIE (KIE_BASE_URL is a port nothing listens on); flood control
runs, with limits no simulated user reaches. The tables show the whole workload and each
phase; issue 14's targets are judged on the taps (navigation updates), and printed with
"met" or "NOT MET" as measured.

Knobs besides the sizes: ``--only``, ``--rounds N`` (everything N times, the order of the
bots rotated; median and best), ``--profile NAME`` (one more run of that bot with cProfile
switched on over the timed phases only, by signals to a wrapper in the bot's process: a
whole-process profile is mostly the imports of start-up), ``--env NAME=VALUE`` (a trt
setting, e.g. DB_POOL_SIZE), ``--wait-idle S`` (wait for other work on the host to end
before each bot), ``--keep-logs``.

Why it is fair: the same driver, the same fake Bot API (a fresh instance per bot), the
same users and seeds, the same HTTP path (webhook answered only once the update is
handled: the floor's handler runs with handle_in_background=False, as trt's does), the same
per-chat lock (SimpleEventIsolation, as trt/app.py), the same JSON log level and one log
line per update, the same Bot API calls per tap in the same order (answerCallbackQuery,
then editMessageText), a warm-up before the clock, and every configuration in one run,
so the ratios compare numbers taken on the same machine minutes apart. The driver's own
CPU is reported, and the host's CPU not accounted for by the driver, the bot and
PostgreSQL ("other load"): on a 2-core machine both make the numbers noisy.

Checks after every phase, so a broken bot cannot look fast: every webhook answer is 200;
after every update the chat shows the screen the tap leads to (its text and its buttons;
for trt, new callback data); the Bot API got exactly USERS sendMessage (phase 1) and
USERS*CLICKS answerCallbackQuery and editMessageText (phase 2), nothing else, none failed;
every callback query answered exactly once and without a notice; and no log line at
level error or above.

Every bot is stopped (SIGTERM, then SIGKILL) and every database dropped on failure, on
Ctrl-C and on SIGTERM; a bot also gets SIGTERM if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import ctypes
import functools
import html
import json
import os
import pstats
import pwd
import random
import re
import runpy
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiogram
import aiohttp
import asyncpg
import yaml
from sqlalchemy.engine import URL, make_url

from bench import plain_bot
from bench.report import log, percentile
from engine import callback_data
from engine.graph import back_target
from engine.local.bot_api_server import FakeBotAPI
from engine.spec import PLACEHOLDER, FlowSpec, localized

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRT = str(Path(sys.executable).parent / "trt")
FLOWS = REPO / "flows.yaml"
TOKEN = "123456:BenchServiceToken_abcdefgh"
SECRET = "bench-service-secret_0123456789"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/telegram/webhook"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DB_PREFIX = "bench_service"
LOCALE = "en"
# PostgreSQL (15) flushes an idle backend's statistics within 10 s (PGSTAT_IDLE_INTERVAL).
SETTLE_S = 11.0
BACKGROUND_S = 30.0
WARMUP_FIRST_ID = 9_000_000
START_TIMEOUT_S = 180.0
POST_TIMEOUT_S = 120.0

KINDS = ("floor", "memory", "sqlite", "postgresql")
LABELS = {
    "floor": "floor (plain aiogram)",
    "memory": "trt memory",
    "sqlite": "trt sqlite",
    "postgresql": "trt postgresql",
}
SQL_KINDS = ("memory", "sqlite", "postgresql")
# Bot API calls a bot makes in its first updates, until it has their answer, which it keeps.
ONCE_CALLS = frozenset({"getMe"})

# Issue 14's targets.
TARGET_CPU_X = 1.5  # CPU per navigation update (bot, + PostgreSQL's) over the floor's
TARGET_THROUGHPUT_X = 0.67
TARGET_PG_CPU_MS = 1.0
TARGET_TX = 1.0
TARGET_STARTUP_X = 1.2
TARGET_MIGRATE_HEAD_S = 1.0


class BenchError(AssertionError):
    """A bot did something other than the workload expects."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- /proc --------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: field n is at index n - 3."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a process so far."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICK


@dataclass(frozen=True, slots=True)
class Memory:
    """One reading of a process's /proc/<pid>/status, in MB."""

    rss: float
    anon: float
    hwm: float  # the peak RSS so far


def memory_of(pid: int) -> Memory | None:
    fields: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "VmHWM"):
            fields[name] = int(rest.split()[0]) / 1024
    if "VmRSS" not in fields:
        return None
    return Memory(fields["VmRSS"], fields.get("RssAnon", 0.0), fields.get("VmHWM", 0.0))


def peak_rss_mb(pid: int) -> float | None:
    memory = memory_of(pid)
    return None if memory is None else memory.hwm


QUIET_CORES = 0.25


async def until_quiet(patience: float) -> None:
    """Waits (at most `patience` seconds) until the host's CPU is idle over 2 s: other
    work on a 2-core machine (a test suite) skews every number of a run."""
    if patience <= 0:
        return
    deadline = time.perf_counter() + patience
    waited = False
    while True:
        before, at = host_busy(), time.perf_counter()
        await asyncio.sleep(2.0)
        after = host_busy()
        if before is None or after is None:
            return
        cores = (after - before) / (time.perf_counter() - at)
        if cores < QUIET_CORES:
            if waited:
                log(f"host idle ({cores:.2f} cores busy)")
            return
        if time.perf_counter() > deadline:
            log(f"host still busy ({cores:.2f} cores); going on")
            return
        if not waited:
            log(f"host busy ({cores:.2f} cores): waiting up to {patience:.0f} s")
            waited = True


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def host_busy() -> float | None:
    """Busy CPU seconds of the whole host so far (all but idle and iowait)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


class ServerCpu:
    """CPU seconds of the local PostgreSQL server: every process of user postgres, plus
    the postmaster's cutime+cstime (its children that exited: backends of closed sessions).
    None when no such process is visible (a remote server)."""

    def __init__(self) -> None:
        try:
            self.uid: int | None = pwd.getpwnam("postgres").pw_uid
        except KeyError:
            self.uid = None

    def read(self) -> float | None:
        if self.uid is None:
            return None
        parents: dict[int, int] = {}
        fields_of: dict[int, list[str]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != self.uid:
                    continue
            except OSError:
                continue
            pid = int(entry.name)
            fields = _stat_fields(pid)
            if fields is not None:
                fields_of[pid] = fields
                parents[pid] = int(fields[1])
        if not fields_of:
            return None
        total = 0
        for pid, fields in fields_of.items():
            total += int(fields[11]) + int(fields[12])
            if parents[pid] not in fields_of:  # the postmaster
                total += int(fields[13]) + int(fields[14])
        return total / TICK


# ---- PostgreSQL ---------------------------------------------------------------------


def pg_dsn(url: URL) -> str:
    """The asyncpg / libpq form of a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True, slots=True)
class PgStats:
    transactions: int
    sessions: int | None
    at: float  # perf_counter when read


class Postgres:
    """The admin connection: creates and drops the run's databases, reads their stats."""

    def __init__(self, admin: URL) -> None:
        self.admin = admin
        self.conn: asyncpg.Connection | None = None
        self.made: set[str] = set()  # created and not dropped yet

    async def open(self) -> None:
        self.conn = await asyncpg.connect(pg_dsn(self.admin), timeout=10)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def _conn(self) -> asyncpg.Connection:
        assert self.conn is not None
        return self.conn

    async def facts(self) -> str:
        conn = self._conn()
        version = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections')"
        )
        return f"PostgreSQL {version} ({', '.join(f'{r[0]}={r[1]}' for r in rows)})"

    async def create(self) -> str:
        name = f"{DB_PREFIX}_{secrets.token_hex(4)}"
        self.made.add(name)
        await self._conn().execute(f'CREATE DATABASE "{name}"')
        return name

    async def drop(self, name: str) -> None:
        await self._conn().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.discard(name)

    def url(self, name: str) -> str:
        return self.admin.set(database=name).render_as_string(hide_password=False)

    async def stats(self, name: str) -> PgStats:
        conn = self._conn()
        try:
            row = await conn.fetchrow(
                "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database "
                "WHERE datname = $1",
                name,
            )
        except asyncpg.UndefinedColumnError:  # before PostgreSQL 14: no `sessions`
            row = await conn.fetchrow(
                "SELECT xact_commit + xact_rollback, NULL FROM pg_stat_database WHERE datname = $1",
                name,
            )
        if row is None:
            raise BenchError(f"no statistics for database {name}")
        sessions = None if row[1] is None else int(row[1])
        return PgStats(int(row[0]), sessions, time.perf_counter())


async def postgres_reason(admin: URL) -> str | None:
    try:
        conn = await asyncpg.connect(pg_dsn(admin), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


# ---- the menus: which taps are navigation, and what a screen must show ----------------

JSONDict = dict[str, Any]
_TAG = re.compile(r"<[^>]*>")


def plain_text(telegram_html: str) -> str:
    """What Telegram (and the fake) keeps of an HTML text: the text without its tags."""
    return html.unescape(_TAG.sub("", telegram_html))


def buttons_of(message: JSONDict) -> list[JSONDict]:
    markup = message.get("reply_markup") or {}
    return [button for row in markup.get("inline_keyboard", []) for button in row]


class Menu(Protocol):
    root: str

    def choices(self, state: str, message: JSONDict) -> list[tuple[str, str]]:
        """The navigation taps on `message` (shown in `state`): (callback data, target)."""
        ...

    def check(self, state: str, before: JSONDict | None, after: JSONDict) -> str | None:
        """Why `after` is not the screen of `state` (None: it is)."""
        ...


class FloorMenu:
    """The floor's menu, from `bench.plain_bot.SCREENS`: every button is navigation."""

    root = plain_bot.ROOT

    def __init__(self) -> None:
        self.texts = {name: plain_text(s.text) for name, s in plain_bot.SCREENS.items()}
        self.data = {
            name: [
                b["callback_data"]
                for b in buttons_of({"reply_markup": plain_bot.keyboard(name).model_dump()})
            ]
            for name in plain_bot.SCREENS
        }

    def choices(self, state: str, message: JSONDict) -> list[tuple[str, str]]:
        found = []
        for button in buttons_of(message):
            target = plain_bot.target_of(state, str(button.get("callback_data")))
            if target is None:
                raise BenchError(f"floor: unknown callback data {button.get('callback_data')!r}")
            found.append((str(button["callback_data"]), target))
        return found

    def check(self, state: str, before: JSONDict | None, after: JSONDict) -> str | None:
        if after.get("text") != self.texts[state]:
            return f"text is not screen {state!r}: {str(after.get('text'))[:60]!r}"
        if [b.get("callback_data") for b in buttons_of(after)] != self.data[state]:
            return f"buttons are not those of screen {state!r}"
        return None


def _text_pattern(template: str) -> re.Pattern[str]:
    """A screen's text whatever its providers filled in; an empty list may add a line."""
    literal = PLACEHOLDER.split(_TAG.sub("", template))[0::2]  # one group: every 2nd part
    body = ".*?".join(re.escape(html.unescape(part)) for part in literal)
    return re.compile(body + r"(?:\n\n.*)?", re.DOTALL)


class TrtMenu:
    """flows.yaml read as the engine reads it (engine.spec, engine.graph, callback_data)."""

    def __init__(self, path: Path) -> None:
        spec = FlowSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        self.spec = spec
        self.root = spec.root
        self.patterns = {
            name: _text_pattern(localized(st.text, LOCALE, spec.fallback_locale))
            for name, st in spec.states.items()
        }
        self.button_ids: dict[str, list[str]] = {}
        for name, st in spec.states.items():
            ids = [b.id for row in st.buttons for b in row]
            if back_target(spec, name) is not None:
                ids += [callback_data.BACK_ID, callback_data.MAIN_ID]
            self.button_ids[name] = ids
        self.buttons = {
            (name, b.id): b for name, st in spec.states.items() for row in st.buttons for b in row
        }

    def _navigates_to(self, state: str, tap: callback_data.Tap) -> str | None:
        """The state a navigation tap leads to; None for any tap that is more than that."""
        spec = self.spec
        if tap.button == callback_data.BACK_ID:
            target = back_target(spec, state)
        elif tap.button == callback_data.MAIN_ID:
            target = spec.root
        elif tap.button == callback_data.OPTION_ID:
            options = spec.states[state].options
            target = options.to if options is not None and options.action is None else None
        else:
            button = self.buttons.get((state, tap.button))
            if button is None:
                raise BenchError(f"trt: button {tap.button!r} is not on screen {state!r}")
            target = button.to if button.action is None else None
        if target is None or spec.states[target].input is not None:
            return None
        return target

    def choices(self, state: str, message: JSONDict) -> list[tuple[str, str]]:
        found = []
        for button in buttons_of(message):
            data = button.get("callback_data")
            if data is None:
                continue  # a URL button
            tap = callback_data.decode(str(data))
            if tap is None:
                raise BenchError(f"trt: callback data {data!r} does not decode")
            target = self._navigates_to(state, tap)
            if target is not None:
                found.append((str(data), target))
        return found

    @staticmethod
    def _taps(message: JSONDict) -> list[callback_data.Tap]:
        taps = []
        for button in buttons_of(message):
            if button.get("callback_data") is not None:
                tap = callback_data.decode(str(button["callback_data"]))
                if tap is None:
                    raise BenchError(f"trt: callback data {button['callback_data']!r}")
                taps.append(tap)
        return taps

    def check(self, state: str, before: JSONDict | None, after: JSONDict) -> str | None:
        if not self.patterns[state].fullmatch(str(after.get("text", ""))):
            return f"text is not screen {state!r}: {str(after.get('text'))[:60]!r}"
        taps = self._taps(after)
        ids = [t.button for t in taps if t.button != callback_data.OPTION_ID]
        if ids != self.button_ids[state]:
            return f"buttons {ids} are not those of screen {state!r}"
        if before is not None and taps:
            old = self._taps(before)
            if old and taps[0].counter == old[0].counter:
                return "the buttons were not renewed (same counter): the tap did not move"
        return None


# ---- the bot processes ---------------------------------------------------------------

_LIBC: Any = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the driver dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)

LIVE_PIDS: set[int] = set()  # started and not seen to exit: the last resort kills these


def settings_names() -> set[str]:
    """Every environment variable the product reads, so the bots get none by accident."""
    from trt.settings import settings_classes

    names = {"HOST", "PORT"}
    for cls in settings_classes():
        for name, info in cls.model_fields.items():
            names.add(info.alias or name.upper())
    return names


@dataclass(slots=True)
class BotProcess:
    kind: str
    process: asyncio.subprocess.Process
    log_path: Path
    base: str
    spawned: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def spawn(
    kind: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, port: int
) -> BotProcess:
    with log_path.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the driver only, which stops them in order
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
    LIVE_PIDS.add(process.pid)
    return BotProcess(kind, process, log_path, f"http://127.0.0.1:{port}", time.perf_counter())


async def until_healthy(bot: BotProcess, http: aiohttp.ClientSession) -> float:
    """Seconds from spawn to the first 200 from /healthz."""
    deadline = bot.spawned + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        if bot.process.returncode is not None:
            raise BenchError(
                f"{bot.kind} exited with {bot.process.returncode} while starting:\n"
                + bot.log_tail()
            )
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(bot.base + "/healthz") as resp:
                if resp.status == 200:
                    return time.perf_counter() - bot.spawned
        await asyncio.sleep(0.01)
    raise BenchError(f"{bot.kind}: no 200 from /healthz within {START_TIMEOUT_S:.0f} s")


async def until_webhook(bot: BotProcess, api: FakeBotAPI) -> None:
    """The bot registered its webhook: start-up done, its start-up calls made."""
    try:
        call = await api.wait_for_call("setWebhook", timeout=START_TIMEOUT_S)
    except TimeoutError:
        raise BenchError(f"{bot.kind}: no setWebhook\n{bot.log_tail()}") from None
    if call.params.get("secret_token") != SECRET:
        raise BenchError(f"{bot.kind}: setWebhook without the secret token")


async def stop(bot: BotProcess) -> None:
    process = bot.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 40)
        except TimeoutError:
            log(f"{bot.kind}: no exit 40 s after SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    LIVE_PIDS.discard(process.pid)


async def run_command(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Runs a command to its end: (wall seconds, output); BenchError when it fails."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    LIVE_PIDS.add(process.pid)
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        LIVE_PIDS.discard(process.pid)
    seconds = time.perf_counter() - started
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({process.returncode}):\n{text[-2000:]}")
    return seconds, text


# ---- the workload --------------------------------------------------------------------


@dataclass(slots=True)
class SimUser:
    uid: int
    rng: random.Random
    state: str = ""
    message_id: int = 0


@dataclass(slots=True)
class Driver:
    """Posts one user's updates to a bot and checks what each did to the chat's screen."""

    api: FakeBotAPI
    http: aiohttp.ClientSession
    hook: str
    menu: Menu
    kind: str
    issued: set[str] = field(default_factory=set)
    visits: collections.Counter[str] = field(default_factory=collections.Counter)

    async def post(self, update: JSONDict, latencies: list[float]) -> None:
        body = json.dumps(update).encode()
        headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
        started = time.perf_counter()
        async with self.http.post(self.hook, data=body, headers=headers) as resp:
            await resp.read()
            status = resp.status
        latencies.append(time.perf_counter() - started)
        if status != 200:
            raise BenchError(f"{self.kind}: webhook answered {status} to update {update}")

    def _screen(self, user: SimUser) -> JSONDict:
        message = self.api.messages.get(user.uid, {}).get(user.message_id)
        if message is None:
            raise BenchError(f"{self.kind}: chat {user.uid} has no message {user.message_id}")
        return message

    async def start(self, user: SimUser, latencies: list[float]) -> None:
        update = self.api.make_message_update(
            user.uid, user.uid, "/start", language_code=LOCALE, first_name=f"u{user.uid}"
        )
        await self.post(update, latencies)
        chat = self.api.messages.get(user.uid) or {}
        if not chat or max(chat) == user.message_id:
            raise BenchError(f"{self.kind}: /start of chat {user.uid} sent no screen")
        user.message_id = max(chat)
        if problem := self.menu.check(self.menu.root, None, chat[user.message_id]):
            raise BenchError(f"{self.kind}: chat {user.uid} after /start: {problem}")
        user.state = self.menu.root

    async def taps(self, user: SimUser, clicks: int, latencies: list[float]) -> None:
        for k in range(clicks):
            before = self._screen(user)
            choices = self.menu.choices(user.state, before)
            if not choices:
                raise BenchError(f"{self.kind}: no navigation button on {user.state!r}")
            data, target = user.rng.choice(choices)
            update = self.api.make_callback_update(
                user.uid, user.uid, user.message_id, data, language_code=LOCALE
            )
            self.issued.add(update["callback_query"]["id"])
            await self.post(update, latencies)
            if problem := self.menu.check(target, before, self._screen(user)):
                raise BenchError(
                    f"{self.kind}: chat {user.uid}, tap {k} ({user.state} -> {target}): {problem}"
                )
            user.state = target
            self.visits[target] += 1


async def in_pool(
    concurrency: int, users: Iterable[SimUser], work: Callable[[SimUser], Awaitable[None]]
) -> float:
    """Every user's `work`, at most `concurrency` users at once; the seconds it took."""
    queue = iter(users)

    async def worker() -> None:
        for user in queue:
            await work(user)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except ExceptionGroup as group_error:  # the first failure says what went wrong
        raise group_error.exceptions[0] from None
    return time.perf_counter() - started


def make_users(first_id: int, count: int, seed: int) -> list[SimUser]:
    """The i-th user of every run walks the same path on the same menu: seeded by i."""
    return [SimUser(first_id + i, random.Random(f"{seed}:{i}")) for i in range(count)]


# ---- one phase, measured and checked -------------------------------------------------


@dataclass(slots=True)
class Sample:
    at: float
    bot: float | None
    driver: float
    server: float | None
    host: float | None
    calls: int
    log_at: int


@dataclass(slots=True)
class Phase:
    updates: int
    seconds: float
    latencies: list[float]
    bot_cpu: float | None
    driver_cpu: float
    server_cpu: float | None
    host_busy: float | None
    calls: int
    log_lines: int
    warnings: int
    transactions: int | None = None
    sessions: int | None = None
    # Seconds between the two reads of the statistics, and the transactions the bot's
    # background work (the job poller) makes in that time while idle: set afterwards.
    stats_window: float | None = None
    background_tx: float | None = None

    @staticmethod
    def merge(parts: Sequence[Phase]) -> Phase:
        def total(values: Iterable[float | int | None]) -> Any:
            found = list(values)
            return None if any(v is None for v in found) else sum(v for v in found if v)

        return Phase(
            updates=sum(p.updates for p in parts),
            seconds=sum(p.seconds for p in parts),
            latencies=[x for p in parts for x in p.latencies],
            bot_cpu=total(p.bot_cpu for p in parts),
            driver_cpu=sum(p.driver_cpu for p in parts),
            server_cpu=total(p.server_cpu for p in parts),
            host_busy=total(p.host_busy for p in parts),
            calls=sum(p.calls for p in parts),
            log_lines=sum(p.log_lines for p in parts),
            warnings=sum(p.warnings for p in parts),
            transactions=total(p.transactions for p in parts),
            sessions=total(p.sessions for p in parts),
            stats_window=total(p.stats_window for p in parts),
            background_tx=total(p.background_tx for p in parts),
        )


class Context:
    """What one bot's run measures with: its process, the fake API, the server."""

    def __init__(
        self, bot: BotProcess, api: FakeBotAPI, server: ServerCpu, pg: Postgres | None, db: str
    ) -> None:
        self.bot, self.api, self.server, self.pg, self.db = bot, api, server, pg, db

    def sample(self) -> Sample:
        return Sample(
            at=time.perf_counter(),
            bot=process_cpu(self.bot.pid),
            driver=own_cpu(),
            server=self.server.read(),
            host=host_busy(),
            calls=len(self.api.calls),
            log_at=self.bot.log_size(),
        )

    async def settled_stats(self) -> PgStats | None:
        if self.pg is None:
            return None
        await asyncio.sleep(SETTLE_S)
        return await self.pg.stats(self.db)

    def check_calls(
        self,
        since: int,
        until: int,
        want: dict[str, int],
        issued: set[str],
        once: collections.Counter[str] | None = None,
    ) -> None:
        """Exactly `want` between the two indexes of the calls, none failed, each of
        `issued` answered once without a notice. `once`: the warm-up, where calls a bot
        makes until it has their answer (getMe, which aiogram then keeps; once per update
        that needs it before the first answer arrives) are moved from the counts into it."""
        kind = self.bot.kind
        calls = self.api.calls[since:until]
        counts = collections.Counter(c.method for c in calls)
        if once is not None:
            for method in set(counts) - set(want):
                if method in ONCE_CALLS:
                    once[method] += counts.pop(method)
        if dict(counts) != {k: v for k, v in want.items() if v}:
            raise BenchError(f"{kind}: Bot API calls {dict(counts)}, want {want}")
        failed = [c for c in calls if c.failed]
        if failed:
            raise BenchError(f"{kind}: {len(failed)} Bot API calls failed: {failed[0].result}")
        answers = [c for c in calls if c.method == "answerCallbackQuery"]
        ids = collections.Counter(str(c.params.get("callback_query_id")) for c in answers)
        if set(ids) != issued or any(n != 1 for n in ids.values()):
            twice = sum(1 for n in ids.values() if n > 1)
            missing = len(issued - set(ids))
            raise BenchError(
                f"{kind}: callback answers: {missing} unanswered, {twice} answered twice"
            )
        noticed = [c for c in answers if c.params.get("text") or c.params.get("show_alert")]
        if noticed:
            raise BenchError(
                f"{kind}: {len(noticed)} callback answers carried a notice, e.g. "
                f"{noticed[0].params.get('text')!r}"
            )

    def read_log(self, start: int, end: int) -> tuple[int, int]:
        """(lines, warnings) of the bot's log between two offsets; BenchError on an error."""
        with self.bot.log_path.open("rb") as f:
            f.seek(start)
            chunk = f.read(max(0, end - start)).decode(errors="replace")
        lines = [line for line in chunk.splitlines() if line.strip()]
        warnings, errors = 0, []
        for line in lines:
            try:
                level = str(json.loads(line).get("level", "")).lower()
            except (ValueError, AttributeError):
                errors.append(line)  # not a JSON line: a traceback or a crash
                continue
            if level in ("error", "critical", "exception", "fatal"):
                errors.append(line)
            elif level in ("warning", "warn"):
                warnings += 1
        if errors:
            shown = "\n".join(e[:300] for e in errors[:3])
            raise BenchError(f"{self.bot.kind}: {len(errors)} error lines in its log:\n{shown}")
        return len(lines), warnings

    def phase(
        self,
        before: Sample,
        after: Sample,
        updates: int,
        seconds: float,
        latencies: list[float],
        stats: tuple[PgStats | None, PgStats | None],
    ) -> Phase:
        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        lines, warnings = self.read_log(before.log_at, after.log_at)
        first, last = stats
        return Phase(
            updates=updates,
            seconds=seconds,
            latencies=latencies,
            bot_cpu=delta(before.bot, after.bot),
            driver_cpu=after.driver - before.driver,
            server_cpu=delta(before.server, after.server),
            host_busy=delta(before.host, after.host),
            calls=after.calls - before.calls,
            log_lines=lines,
            warnings=warnings,
            transactions=None
            if first is None or last is None
            else last.transactions - first.transactions,
            sessions=None
            if first is None or last is None or first.sessions is None or last.sessions is None
            else last.sessions - first.sessions,
            stats_window=None if first is None or last is None else last.at - first.at,
        )


@dataclass(slots=True)
class RunResult:
    """One bot at one concurrency."""

    starts: Phase
    taps: Phase
    visits: collections.Counter[str]

    @property
    def whole(self) -> Phase:
        return Phase.merge([self.starts, self.taps])


async def timed_run(
    ctx: Context,
    driver: Driver,
    users: list[SimUser],
    clicks: int,
    concurrency: int,
    profile: Callable[[bool], None] | None = None,
) -> RunResult:
    """/start for every user, then every user's taps: each phase timed and checked.
    `profile` (--profile) is called with True as each phase begins, False as it ends."""
    toggle = profile or (lambda _on: None)
    driver.issued = set()
    driver.visits = collections.Counter()
    stats0 = await ctx.settled_stats()
    s0 = ctx.sample()
    start_lat: list[float] = []
    toggle(True)
    seconds = await in_pool(concurrency, users, lambda u: driver.start(u, start_lat))
    toggle(False)
    s1 = ctx.sample()
    stats1 = await ctx.settled_stats()
    s1b = ctx.sample()
    tap_lat: list[float] = []
    toggle(True)
    tap_seconds = await in_pool(concurrency, users, lambda u: driver.taps(u, clicks, tap_lat))
    toggle(False)
    s2 = ctx.sample()
    stats2 = await ctx.settled_stats()
    end = len(ctx.api.calls)
    n = len(users)
    ctx.check_calls(s0.calls, s1.calls, {"sendMessage": n}, set())
    want = {"answerCallbackQuery": n * clicks, "editMessageText": n * clicks}
    ctx.check_calls(s1b.calls, s2.calls, want, driver.issued)
    if s1b.calls != s1.calls or end != s2.calls:
        raise BenchError(f"{ctx.bot.kind}: Bot API calls between the phases")
    starts = ctx.phase(s0, s1, n, seconds, start_lat, (stats0, stats1))
    taps = ctx.phase(s1b, s2, n * clicks, tap_seconds, tap_lat, (stats1, stats2))
    return RunResult(starts, taps, driver.visits)


# ---- one bot: database, process, warm-up, runs -----------------------------------------


@dataclass(slots=True)
class BotRun:
    kind: str
    startup_s: float
    peak_rss_mb: float | None
    migrate_s: float | None
    migrate_head_s: float | None
    runs: dict[int, RunResult]
    log_path: Path
    # Bot API calls besides the workload's: at start-up (setWebhook...) and in the first
    # updates of the warm-up (getMe, whose answer aiogram keeps).
    startup_calls: collections.Counter[str]
    warmup_calls: collections.Counter[str]


@dataclass(slots=True)
class Options:
    users: int
    clicks: int
    concurrency: list[int]
    only: list[str]
    rounds: int
    warmup: int
    seed: int
    profile: str | None
    top: int
    keep_logs: bool
    wait_idle: float
    pg_url: str
    quick: bool
    env: dict[str, str]


class Bench:
    def __init__(self, opts: Options, workdir: Path, pg: Postgres | None) -> None:
        self.opts = opts
        self.workdir = workdir
        self.pg = pg
        self.server = ServerCpu()
        self.base_env = {k: v for k, v in os.environ.items() if k not in settings_names()}
        self.trt_menu = TrtMenu(FLOWS)
        self.floor_menu = FloorMenu()
        self.once: collections.Counter[str] = collections.Counter()

    def env_for(
        self, kind: str, api: FakeBotAPI, port: int, database_url: str | None
    ) -> dict[str, str]:
        base = f"http://127.0.0.1:{port}"
        env = dict(self.base_env)
        env |= {
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_BASE": api.base_url,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_URL": base + WEBHOOK_PATH,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "INFO",
        }
        if kind == "floor":
            env["PYTHONPATH"] = str(REPO)
            return env
        assert database_url is not None
        return (
            env
            | {
                "PUBLIC_BASE_URL": base,
                "FLOWS_PATH": str(FLOWS),
                "STATE_STORE": "memory" if kind == "memory" else "sql",
                "DATABASE_URL": database_url,
                # Flood control runs, but lets the simulated users (each one update at a time,
                # faster than any person) through.
                "FLOOD_RATE": "100000",
                "FLOOD_BURST": "100000",
                "FLOOD_IN_FLIGHT": "1000",
                # Navigation never calls KIE: a port nothing listens on.
                "KIE_API_KEY": "bench-unused-kie-key",
                "KIE_BASE_URL": f"http://127.0.0.1:{free_port()}",
            }
            | self.opts.env
        )

    def argv_for(self, kind: str, profile_out: Path | None) -> list[str]:
        command = ["-m", "bench.plain_bot"] if kind == "floor" else [TRT, "serve"]
        if profile_out is not None:
            child = [PYTHON, "-m", "bench.service_bench", PROFILED_CHILD, str(profile_out)]
            return [*child, "--", *command]
        return [PYTHON, *command] if kind == "floor" else command

    async def run_bot(
        self, kind: str, rnd: int, concurrencies: list[int], profile_out: Path | None = None
    ) -> BotRun:
        opts = self.opts
        folder = self.workdir / f"{kind}-round{rnd}{'-profile' if profile_out else ''}"
        folder.mkdir()
        database_url: str | None = None
        db_name = ""
        migrate_s = migrate_head_s = None
        port = free_port()
        async with (
            FakeBotAPI() as api,
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=max(concurrencies) + 4),
            ) as http,
        ):
            try:
                if kind in ("memory", "sqlite"):
                    database_url = f"sqlite+aiosqlite:///{folder / 'bot.db'}"
                elif kind == "postgresql":
                    assert self.pg is not None
                    db_name = await self.pg.create()
                    database_url = self.pg.url(db_name)
                env = self.env_for(kind, api, port, database_url)
                if profile_out is not None:
                    env["PYTHONPATH"] = str(REPO)  # for bench.service_bench in the bot
                if database_url is not None:
                    log(f"{kind}: trt migrate")
                    migrate_s, _ = await run_command([TRT, "migrate"], env, folder)
                    migrate_head_s, _ = await run_command([TRT, "migrate"], env, folder)
                log(f"{kind}: starting (round {rnd + 1})")
                bot = await spawn(
                    kind, self.argv_for(kind, profile_out), env, folder, folder / "bot.log", port
                )
                try:
                    startup = await until_healthy(bot, http)
                    await until_webhook(bot, api)
                    startup_calls = collections.Counter(c.method for c in api.calls)
                    self.once = collections.Counter()
                    menu: Menu = self.floor_menu if kind == "floor" else self.trt_menu
                    driver = Driver(api, http, bot.base + WEBHOOK_PATH, menu, kind)
                    ctx = Context(bot, api, self.server, self.pg if db_name else None, db_name)
                    await self.warm_up(ctx, driver, max(concurrencies))
                    runs: dict[int, RunResult] = {}
                    for j, conc in enumerate(concurrencies):
                        log(
                            f"{kind}: {opts.users} users x (/start + {opts.clicks} taps), "
                            f"concurrency {conc}"
                        )
                        users = make_users((j + 1) * 1_000_000, opts.users, opts.seed)
                        toggle = None if profile_out is None else profile_switch(bot)
                        runs[conc] = await timed_run(ctx, driver, users, opts.clicks, conc, toggle)
                        if profile_out is not None:
                            await until_written(profile_out, bot)
                        taps = runs[conc].taps
                        log(
                            f"{kind} @{conc}: {taps.updates / taps.seconds:.0f} taps/s, "
                            f"p50 {percentile(taps.latencies, 0.5) * 1000:.1f} ms"
                        )
                    rss = peak_rss_mb(bot.pid)
                    if db_name:
                        background = await self.background_rate(ctx)
                        for result in runs.values():
                            for phase in (result.starts, result.taps):
                                if phase.stats_window is not None:
                                    phase.background_tx = background * phase.stats_window
                finally:
                    await stop(bot)
                if bot.process.returncode not in (0, -signal.SIGTERM):
                    log(f"{kind}: exited with {bot.process.returncode}\n{bot.log_tail()}")
            finally:
                if db_name and self.pg is not None:
                    await self.pg.drop(db_name)
        return BotRun(
            kind,
            startup,
            rss,
            migrate_s,
            migrate_head_s,
            runs,
            bot.log_path,
            startup_calls,
            self.once,
        )

    async def background_rate(self, ctx: Context) -> float:
        """Transactions per second in the bot's database while no update comes: the job
        poller's passes (every POLL_INTERVAL_S). Read over BACKGROUND_S of idleness."""
        assert ctx.pg is not None
        log(f"{ctx.bot.kind}: {BACKGROUND_S:.0f} s idle, for the background transactions")
        first = await ctx.pg.stats(ctx.db)
        await asyncio.sleep(BACKGROUND_S)
        last = await ctx.pg.stats(ctx.db)
        return (last.transactions - first.transactions) / (last.at - first.at)

    async def warm_up(self, ctx: Context, driver: Driver, concurrency: int) -> None:
        opts = self.opts
        if opts.warmup <= 0:
            return
        users = make_users(WARMUP_FIRST_ID, opts.warmup, opts.seed + 1)
        driver.issued = set()
        since, log_at = len(ctx.api.calls), ctx.bot.log_size()
        latencies: list[float] = []
        await in_pool(concurrency, users, lambda u: driver.start(u, latencies))
        await in_pool(concurrency, users, lambda u: driver.taps(u, opts.clicks, latencies))
        n = len(users)
        want = {
            "sendMessage": n,
            "answerCallbackQuery": n * opts.clicks,
            "editMessageText": n * opts.clicks,
        }
        ctx.check_calls(since, len(ctx.api.calls), want, driver.issued, self.once)
        ctx.read_log(log_at, ctx.bot.log_size())


# ---- the report ----------------------------------------------------------------------

# Metrics where more is better; every other one is a cost (less is better).
HIGHER_BETTER = {"rate"}


def phase_metrics(phase: Phase) -> dict[str, float | None]:
    n = phase.updates

    def per(value: float | int | None, scale: float = 1.0) -> float | None:
        return None if value is None else value * scale / n

    host = phase.host_busy
    accounted = (phase.bot_cpu or 0) + phase.driver_cpu + (phase.server_cpu or 0)
    return {
        "rate": n / phase.seconds,
        "p50": percentile(phase.latencies, 0.50) * 1000,
        "p95": percentile(phase.latencies, 0.95) * 1000,
        "p99": percentile(phase.latencies, 0.99) * 1000,
        "bot_ms": per(phase.bot_cpu, 1000),
        "server_ms": per(phase.server_cpu, 1000),
        "driver_ms": per(phase.driver_cpu, 1000),
        "other_cores": None if host is None else (host - accounted) / phase.seconds,
        "busy_cores": None if host is None else host / phase.seconds,
        "tx": per(phase.transactions),
        "tx_net": None
        if phase.transactions is None or phase.background_tx is None
        else (phase.transactions - phase.background_tx) / n,
        "bg_tx": per(phase.background_tx),
        "sessions": None if phase.sessions is None else float(phase.sessions),
        "calls": per(phase.calls),
        "log_lines": per(phase.log_lines),
        "warnings": float(phase.warnings),
    }


@dataclass(slots=True)
class Aggregate:
    """Each metric over the rounds: the median, and the best (max rate, min cost)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metrics: dict[str, float | None]) -> None:
        for key, value in metrics.items():
            if value is not None:
                self.values.setdefault(key, []).append(value)

    def get(self, key: str, how: str) -> float | None:
        found = self.values.get(key)
        if not found:
            return None
        if how == "median":
            return statistics.median(found)
        return max(found) if key in HIGHER_BETTER else min(found)


def fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:>{width}{spec}}"


COLUMNS = (
    # (header line 1, header line 2, width)
    ("upd/s", "", 7),
    ("p50", "ms", 7),
    ("p95", "ms", 7),
    ("p99", "ms", 7),
    ("bot CPU", "ms/upd", 8),
    ("PG CPU", "ms/upd", 8),
    ("CPU", "x floor", 8),
    ("thr", "x floor", 8),
    ("tx", "/upd", 6),
    ("sess", "opened", 7),
    ("API", "calls/upd", 10),
    ("RSS", "MB", 6),
    ("start", "s", 6),
)
NAME_WIDTH = 22


class Report:
    def __init__(
        self, opts: Options, results: dict[str, list[BotRun]], missing: dict[str, str]
    ) -> None:
        self.opts = opts
        self.results = results
        self.missing = missing  # kind -> why it did not run
        # (kind, concurrency, part) -> Aggregate; part: whole, taps, starts
        self.aggs: dict[tuple[str, int, str], Aggregate] = {}
        self.proc: dict[str, Aggregate] = {}
        for kind, runs in results.items():
            self.proc[kind] = proc = Aggregate()
            for run in runs:
                proc.add(
                    {
                        "rss": run.peak_rss_mb,
                        "startup": run.startup_s,
                        "migrate": run.migrate_s,
                        "migrate_head": run.migrate_head_s,
                    }
                )
                for conc, result in run.runs.items():
                    for part, phase in (
                        ("whole", result.whole),
                        ("taps", result.taps),
                        ("starts", result.starts),
                    ):
                        key = (kind, conc, part)
                        self.aggs.setdefault(key, Aggregate()).add(phase_metrics(phase))

    def metric(self, kind: str, conc: int, part: str, key: str, how: str) -> float | None:
        agg = self.aggs.get((kind, conc, part))
        return None if agg is None else agg.get(key, how)

    def total_cpu(self, kind: str, conc: int, part: str, how: str) -> float | None:
        bot = self.metric(kind, conc, part, "bot_ms", how)
        if bot is None:
            return None
        server = self.metric(kind, conc, part, "server_ms", how) if kind == "postgresql" else 0.0
        return None if server is None else bot + server

    def cpu_x(self, kind: str, conc: int, part: str, how: str) -> float | None:
        mine = self.total_cpu(kind, conc, part, how)
        floor = self.total_cpu("floor", conc, part, how)
        return None if mine is None or not floor else mine / floor

    def thr_x(self, kind: str, conc: int, part: str, how: str) -> float | None:
        mine = self.metric(kind, conc, part, "rate", how)
        floor = self.metric("floor", conc, part, "rate", how)
        return None if mine is None or not floor else mine / floor

    def startup_x(self, kind: str, how: str) -> float | None:
        mine = self.proc[kind].get("startup", how) if kind in self.proc else None
        floor = self.proc["floor"].get("startup", how) if "floor" in self.proc else None
        return None if mine is None or not floor else mine / floor

    def table(self, part: str, how: str) -> None:
        head1 = f"{'':<{NAME_WIDTH}}" + "".join(f" {h:>{w}}" for h, _, w in COLUMNS)
        head2 = f"{'':<{NAME_WIDTH}}" + "".join(f" {h:>{w}}" for _, h, w in COLUMNS)
        for conc in self.opts.concurrency:
            print(f"concurrency {conc}")
            print(head1)
            print(head2)
            print("-" * len(head1))
            for kind in KINDS:
                if kind in self.missing:
                    print(f"{LABELS[kind]:<{NAME_WIDTH}} {self.missing[kind]}")
                    continue
                if not self.results.get(kind):
                    continue
                m = functools.partial(self.metric, kind, conc, part, how=how)
                pg = kind == "postgresql"
                proc = self.proc[kind]
                cells = [
                    fmt(m("rate"), ".0f", 7),
                    fmt(m("p50"), ".1f", 7),
                    fmt(m("p95"), ".1f", 7),
                    fmt(m("p99"), ".1f", 7),
                    fmt(m("bot_ms"), ".2f", 8),
                    fmt(m("server_ms") if pg else None, ".2f", 8),
                    fmt(self.cpu_x(kind, conc, part, how), ".2f", 7) + "x",
                    fmt(self.thr_x(kind, conc, part, how), ".2f", 7) + "x",
                    fmt(m("tx") if pg else None, ".2f", 6),
                    fmt(m("sessions") if pg else None, ".0f", 7),
                    fmt(m("calls"), ".3f", 10),
                    fmt(proc.get("rss", how), ".0f", 6),
                    fmt(proc.get("startup", how), ".2f", 6),
                ]
                print(f"{LABELS[kind]:<{NAME_WIDTH}} " + " ".join(cells))
            print()

    def starts_table(self, how: str) -> None:
        print(
            f"{'':<{NAME_WIDTH}} {'conc':>5} {'starts/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'bot ms':>7} {'PG ms':>7} {'CPU x':>7} {'tx':>6} {'calls':>6}"
        )
        for conc in self.opts.concurrency:
            for kind in KINDS:
                if not self.results.get(kind):
                    continue
                m = functools.partial(self.metric, kind, conc, "starts", how=how)
                pg = kind == "postgresql"
                print(
                    f"{LABELS[kind]:<{NAME_WIDTH}} {conc:>5} {fmt(m('rate'), '.0f', 9)} "
                    f"{fmt(m('p50'), '.1f', 7)} {fmt(m('p99'), '.1f', 7)} "
                    f"{fmt(m('bot_ms'), '.2f', 7)} {fmt(m('server_ms') if pg else None, '.2f', 7)} "
                    f"{fmt(self.cpu_x(kind, conc, 'starts', how), '.2f', 6)}x "
                    f"{fmt(m('tx') if pg else None, '.2f', 6)} {fmt(m('calls'), '.2f', 6)}"
                )
        print()

    def migrations(self) -> None:
        for kind in SQL_KINDS:
            proc = self.proc.get(kind)
            if proc is None or not self.results.get(kind):
                continue
            backend = "PostgreSQL" if kind == "postgresql" else "SQLite"
            first = proc.values.get("migrate", [])
            head = proc.values.get("migrate_head", [])
            print(
                f"{LABELS[kind]:<{NAME_WIDTH}} ({backend}): fresh database "
                f"{', '.join(f'{s:.2f}' for s in first)} s; at head "
                f"{', '.join(f'{s:.2f}' for s in head)} s"
            )
        print()

    def targets(self, how: str) -> list[tuple[bool | None, str]]:
        """(met, line) for every target the run could measure; None: not measured."""
        out: list[tuple[bool | None, str]] = []
        have = {k for k, runs in self.results.items() if runs}
        floor = "floor" in have
        if not floor:
            out.append((None, "every ratio to the floor: the floor was not run (--only)"))

        def verdict(value: float | None, ok: Callable[[float], bool], text: str) -> None:
            if value is None:
                out.append((None, f"{text}: not measured"))
            else:
                out.append((ok(value), text.format(value)))

        for conc in self.opts.concurrency:
            for kind in ("sqlite", "postgresql"):
                if kind in have and floor:
                    whole = self.cpu_x(kind, conc, "whole", how)
                    what = "bot+PG" if kind == "postgresql" else "bot"
                    verdict(
                        self.cpu_x(kind, conc, "taps", how),
                        lambda v: v <= TARGET_CPU_X,
                        f"CPU per navigation update ({what}) <= {TARGET_CPU_X}x floor, "
                        f"{LABELS[kind]} @{conc}: {{:.2f}}x"
                        + ("" if whole is None else f" (whole workload {whole:.2f}x)"),
                    )
            for kind in SQL_KINDS:
                if kind in have and floor:
                    whole = self.thr_x(kind, conc, "whole", how)
                    verdict(
                        self.thr_x(kind, conc, "taps", how),
                        lambda v: v >= TARGET_THROUGHPUT_X,
                        f"throughput >= {TARGET_THROUGHPUT_X}x floor, {LABELS[kind]} @{conc}: "
                        "taps {:.2f}x"
                        + ("" if whole is None else f" (whole workload {whole:.2f}x)"),
                    )
            if "postgresql" in have:
                whole_ms = self.metric("postgresql", conc, "whole", "server_ms", how)
                verdict(
                    self.metric("postgresql", conc, "taps", "server_ms", how),
                    lambda v: v <= TARGET_PG_CPU_MS,
                    f"PG CPU <= {TARGET_PG_CPU_MS:g} ms per navigation update @{conc}: "
                    "{:.2f} ms"
                    + ("" if whole_ms is None else f" (whole workload {whole_ms:.2f} ms)"),
                )
                whole_tx = self.metric("postgresql", conc, "whole", "tx", how)
                start_tx = self.metric("postgresql", conc, "starts", "tx", how)
                net = self.metric("postgresql", conc, "taps", "tx_net", how)
                net_text = ""
                if net is not None:
                    net_met = "met" if net <= TARGET_TX else "not met"
                    net_text = f" ({net:.2f} net of the idle background: {net_met})"
                verdict(
                    self.metric("postgresql", conc, "taps", "tx", how),
                    lambda v: v <= TARGET_TX,
                    f"<= {TARGET_TX:g} transaction per navigation update @{conc}: "
                    "{:.2f} per tap"
                    + net_text
                    + ("" if start_tx is None else f"; {start_tx:.2f} per /start")
                    + ("" if whole_tx is None else f", {whole_tx:.2f} over the workload"),
                )
        for kind in SQL_KINDS:
            if kind in have and floor:
                verdict(
                    self.startup_x(kind, how),
                    lambda v: v <= TARGET_STARTUP_X,
                    f"start-up <= {TARGET_STARTUP_X}x floor, {LABELS[kind]}: {{:.2f}}x",
                )
        for kind in ("sqlite", "postgresql"):
            if kind in have:
                verdict(
                    self.proc[kind].get("migrate_head", how),
                    lambda v: v < TARGET_MIGRATE_HEAD_S,
                    f"trt migrate at head < {TARGET_MIGRATE_HEAD_S:g} s, {LABELS[kind]}: "
                    "{:.2f} s",
                )
        return out

    def notes(self, how: str) -> None:
        for conc in self.opts.concurrency:
            for kind in KINDS:
                if not self.results.get(kind):
                    continue
                m = functools.partial(self.metric, kind, conc, "whole", how=how)
                server = m("server_ms")
                print(
                    f"{LABELS[kind]:<{NAME_WIDTH}} @{conc:<3} driver CPU "
                    f"{fmt(m('driver_ms'), '.2f', 5)} ms/upd, cores busy "
                    f"{fmt(m('busy_cores'), '.2f', 4)} (other load "
                    f"{fmt(m('other_cores'), '.2f', 5)}), log lines/upd "
                    f"{fmt(m('log_lines'), '.2f', 4)}, warnings {fmt(m('warnings'), '.0f', 1)}"
                    + (
                        ""
                        if kind == "postgresql" or server is None
                        else f", PG CPU meanwhile {server:.3f} ms/upd (not this bot's)"
                    )
                    + (
                        f", idle background {fmt(m('bg_tx'), '.3f', 1)} of its "
                        f"{fmt(m('tx'), '.2f', 1)} tx/upd"
                        if kind == "postgresql"
                        else ""
                    )
                )
        print()


def print_extra_calls(results: dict[str, list[BotRun]]) -> None:
    for kind in KINDS:
        runs = results.get(kind)
        if not runs:
            continue
        run = runs[0]

        def shown(calls: collections.Counter[str]) -> str:
            return ", ".join(f"{m} x{n}" for m, n in sorted(calls.items())) or "none"

        print(
            f"{LABELS[kind]:<{NAME_WIDTH}} Bot API calls at start-up: {shown(run.startup_calls)}"
            f"; in the warm-up's first updates: {shown(run.warmup_calls)}"
        )
    print()


def print_visits(results: dict[str, list[BotRun]]) -> None:
    for kind in KINDS:
        runs = results.get(kind)
        if not runs:
            continue
        total: collections.Counter[str] = collections.Counter()
        for run in runs:
            for result in run.runs.values():
                total.update(result.visits)
        taps = sum(total.values())
        if not taps:
            continue
        shown = ", ".join(f"{s} {n * 100 / taps:.0f}%" for s, n in total.most_common())
        print(f"{LABELS[kind]:<{NAME_WIDTH}} taps led to: {shown}")
    print()


# ---- --profile: the bot's timed part under cProfile -------------------------------------

PROFILED_CHILD = "--profiled-child"
PROFILE_ON = signal.SIGUSR1
PROFILE_OFF = signal.SIGUSR2


def profiled_child(out: str, argv: list[str]) -> int:
    """In the bot's process (``python -m bench.service_bench --profiled-child OUT -- argv``):
    runs the bot as its command would (``-m module`` or a script) with cProfile switched on
    by SIGUSR1 and off by SIGUSR2, which writes OUT; so the profile holds the timed part
    only, not the imports of start-up (which would be most of a whole-process profile)."""
    # CPU time of this thread, not wall time: waiting in epoll costs nothing.
    profiler = cProfile.Profile(time.thread_time)

    def on(_signum: int, _frame: Any) -> None:
        profiler.enable()

    def off(_signum: int, _frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(PROFILE_ON, on)
    signal.signal(PROFILE_OFF, off)
    sys.argv = argv[1:] if argv[0] == "-m" else argv
    if argv[0] == "-m":
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(argv[0], run_name="__main__")
    return 0


def profile_switch(bot: BotProcess) -> Callable[[bool], None]:
    def switch(on: bool) -> None:
        bot.process.send_signal(PROFILE_ON if on else PROFILE_OFF)

    return switch


def _written(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _dump_again(path: Path, bot: BotProcess) -> None:
    """The profile is written at every pause; once more now, to know when it is complete."""
    path.unlink(missing_ok=True)
    bot.process.send_signal(PROFILE_OFF)


async def until_written(path: Path, bot: BotProcess) -> None:
    _dump_again(path, bot)
    for _ in range(200):
        if _written(path):
            await asyncio.sleep(0.2)  # dump_stats writes it at once; let it finish
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the profile {path} was not written")


def print_profile(path: Path, kind: str, top: int, concurrency: int) -> None:
    if not path.exists():
        print(f"profile of {kind}: no profile written ({path})")
        return
    stats = pstats.Stats(str(path), stream=sys.stdout)
    print(
        f"\nprofile of {LABELS[kind]}: the bot's main thread over the timed part (/start "
        f"and taps, concurrency {concurrency}; the profiler makes it several times slower)"
    )
    print(f"top {top} by own time")
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time")
    stats.sort_stats("cumulative").print_stats(top)


# ---- command line --------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_bench",
        description="One update over the whole webhook path: trt serve against a plain "
        "aiogram bot, over real HTTP against the fake Bot API.",
    )
    parser.add_argument("--users", type=int, help="simulated users (default 300; quick 60)")
    parser.add_argument("--clicks", type=int, help="taps per user (default 15; quick 8)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help="webhook requests in flight at most, one run each (default 8 32; quick 8)",
    )
    parser.add_argument(
        "--only",
        default=",".join(KINDS),
        help=f"comma-separated bots to run (default {','.join(KINDS)})",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything N times")
    parser.add_argument("--warmup", type=int, help="warm-up users per bot (default 40; quick 10)")
    parser.add_argument("--seed", type=int, default=14, help="the users' random seed")
    parser.add_argument(
        "--profile", choices=KINDS, help="after the table, one more run of this bot under cProfile"
    )
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the bots' logs (the path is printed)"
    )
    parser.add_argument("--quick", action="store_true", help="60 users x 8 taps, concurrency 8")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each bot, wait up to this long for the host to be idle (other work "
        f"below {QUIET_CORES} cores); default 0: do not wait",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every trt serve (and trt migrate), e.g. DB_POOL_SIZE=8; repeatable",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in KINDS]
    if unknown or not only:
        parser.error(f"--only takes names among {', '.join(KINDS)}")
    opts = Options(
        users=args.users or (60 if args.quick else 300),
        clicks=args.clicks if args.clicks is not None else (8 if args.quick else 15),
        concurrency=args.concurrency or ([8] if args.quick else [8, 32]),
        only=[kind for kind in KINDS if kind in only],
        rounds=args.rounds,
        warmup=args.warmup if args.warmup is not None else (10 if args.quick else 40),
        seed=args.seed,
        profile=args.profile,
        top=args.top,
        keep_logs=args.keep_logs,
        wait_idle=args.wait_idle,
        pg_url=os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL),
        quick=args.quick,
        env=dict(item.split("=", 1) for item in args.env),
    )
    if opts.users < 1 or opts.clicks < 1 or opts.rounds < 1 or opts.warmup < 0:
        parser.error("--users, --clicks and --rounds must be at least 1, --warmup at least 0")
    if any(c < 1 for c in opts.concurrency):
        parser.error("--concurrency must be at least 1")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    return opts


async def release(pg: Postgres | None, workdir: Path, *, keep: bool) -> None:
    """After a run: the databases it made are dropped and PostgreSQL is closed; where
    the logs are is printed when they are kept (a failure, or --keep-logs)."""
    if pg is not None:
        for name in list(pg.made):
            with contextlib.suppress(Exception):
                await pg.drop(name)
        await pg.close()
    if keep:
        print(f"logs kept in {workdir}", file=sys.stderr)


async def main(opts: Options, pg_holder: list[Postgres]) -> int:
    started = time.perf_counter()
    # SIGTERM and SIGHUP stop the run as Ctrl-C does: every `finally` below runs, so the
    # bots are stopped and the databases dropped.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    admin = make_url(opts.pg_url)
    if admin.drivername == "postgresql":
        admin = admin.set(drivername="postgresql+asyncpg")
    pg: Postgres | None = None
    pg_down: str | None = None
    if "postgresql" in opts.only:
        pg_down = await postgres_reason(admin)
        if pg_down is None:
            pg = Postgres(admin)
            await pg.open()
            pg_holder.append(pg)
    workdir = Path(tempfile.mkdtemp(prefix="service-bench-"))
    kinds = [k for k in opts.only if k != "postgresql" or pg is not None]
    results: dict[str, list[BotRun]] = {kind: [] for kind in kinds}
    failed = False
    facts = ""
    profile_out: Path | None = None
    try:
        if pg is not None:
            facts = await pg.facts()
        bench = Bench(opts, workdir, pg)
        for rnd in range(opts.rounds):
            # Rotate the order, so no bot always runs first or last.
            order = kinds[rnd % len(kinds) :] + kinds[: rnd % len(kinds)]
            for kind in order:
                await until_quiet(opts.wait_idle)
                results[kind].append(await bench.run_bot(kind, rnd, opts.concurrency))
        if opts.profile is not None and opts.profile in kinds:
            profile_out = workdir / f"{opts.profile}.prof"
            log(f"{opts.profile}: one more run under cProfile")
            await bench.run_bot(opts.profile, 0, opts.concurrency[:1], profile_out)
    except BaseException:
        failed = True
        raise
    finally:
        await release(pg, workdir, keep=failed or opts.keep_logs)

    missing = {"postgresql": f"not available ({pg_down})"} if pg_down is not None else {}
    report = Report(opts, results, missing)
    updates = opts.users * (opts.clicks + 1)
    print(
        f"service bench{' (--quick)' if opts.quick else ''}: {opts.users} users x (/start + "
        f"{opts.clicks} taps) = {updates} updates per run at each concurrency "
        f"({', '.join(map(str, opts.concurrency))}); warm-up {opts.warmup} users; "
        f"{opts.rounds} round{'s' if opts.rounds > 1 else ''}; seed {opts.seed}"
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, aiogram "
        f"{aiogram.__version__}, aiohttp {aiohttp.__version__}"
    )
    if pg is not None:
        print(facts)
    elif "postgresql" in opts.only:
        print(f"postgresql: not available ({pg_down})")
    if opts.env:
        print(f"trt settings given with --env: {' '.join(f'{k}={v}' for k, v in opts.env.items())}")
    print("every number below passed its checks (see the module docstring)")
    print()
    hows = ["median", "best"] if opts.rounds > 1 else ["median"]
    for how in hows:
        what = f"{how} of {opts.rounds} rounds" if opts.rounds > 1 else "one round"
        print(f"A. the whole workload (/start, then taps), {what}")
        report.table("whole", how)
        print(f"B. navigation taps only (answerCallbackQuery + editMessageText each), {what}")
        report.table("taps", how)
    print("C. /start only (median)")
    report.starts_table("median")
    if any(k in results for k in SQL_KINDS):
        print("D. trt migrate, wall time of the command (every round)")
        report.migrations()
    print(
        "E. issue 14's targets (on the navigation taps, the median; "
        "CPU x floor = (bot + PG) CPU / floor CPU)"
    )
    for met, line in report.targets("median"):
        mark = "not measured" if met is None else ("met" if met else "NOT MET")
        print(f"  [{mark:^12}] {line}")
    print()
    print("F. notes (whole workload, median)")
    report.notes("median")
    print_extra_calls(results)
    print_visits(results)
    print(
        "   upd/s: updates over the phase's wall time; latency: the webhook POST, answer "
        "read; CPU: /proc utime+stime over the phase; PG CPU: every postgres process "
        "(+ exited backends), so other databases' work counts too; tx, sessions: "
        "pg_stat_database of the run's database, read after a "
        f"{SETTLE_S:.0f} s settle; other load: host CPU busy not accounted for by the "
        "driver, the bot and PostgreSQL (cores)."
    )
    if opts.profile is not None:
        if opts.profile in kinds and profile_out is not None:
            print_profile(profile_out, opts.profile, opts.top, opts.concurrency[0])
        else:
            print(f"cannot profile {opts.profile}: not run")
    if not (failed or opts.keep_logs):
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total runtime {time.perf_counter() - started:.0f} s")
    return 1 if pg_down is not None else 0


def last_resort(pg_holder: list[Postgres]) -> None:
    """After the event loop: kill what is still running, drop what is still there."""
    for pid in list(LIVE_PIDS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            log(f"killed leftover process {pid}")
    for pg in pg_holder:
        if pg.made:

            async def drop(pg: Postgres = pg) -> None:
                await pg.open()
                try:
                    for name in list(pg.made):
                        await pg.drop(name)
                        log(f"dropped leftover database {name}")
                finally:
                    await pg.close()

            with contextlib.suppress(Exception):
                asyncio.run(drop())


def run_to_exit_code(run: Callable[[list[Postgres]], Awaitable[int]]) -> int:
    """Runs a benchmark's coroutine, given the list it registers its PostgreSQL in, and
    cleans up whatever way it ends (the same for the service bench and the soak)."""
    pg_holder: list[Postgres] = []

    async def started() -> int:
        return await run(pg_holder)

    try:
        return asyncio.run(started())
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM or SIGHUP
        log("stopped by a signal")
        return 143
    finally:
        last_resort(pg_holder)


def cli(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == [PROFILED_CHILD] and args[2:3] == ["--"]:
        return profiled_child(args[1], args[3:])
    opts = parse_args(argv)
    return run_to_exit_code(lambda pg_holder: main(opts, pg_holder))


if __name__ == "__main__":
    sys.exit(cli())
