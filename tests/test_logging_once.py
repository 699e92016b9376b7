"""Every log record is written once, redacted, and (JSON mode) on one line.

`configure_logging` owns the root logger: whatever handler was there before
(`logging.basicConfig`, an earlier call) is removed, so no unredacted, multi-line copy
of a record reaches the output. The `trt` command line installs it for every
subcommand, so `trt serve`, `trt run`, `trt migrate` and the editors' commands all log
through that one handler; the processes here are the real CLI with secrets in their
environment.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from engine.local.bot_api_server import FakeBotAPI
from kie.fake_server import FakeKie
from storage.migrate import upgrade_to_head
from tests import warm
from trt.observability.logs import REDACTED, configure_logging, install_error_counter
from trt.observability.metrics import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
TRT = str(Path(sys.executable).parent / "trt")
TOKEN = "987654:AAHsecretBotTokenForTheLogTests_xyz"
WEBHOOK_SECRET = "log-test-webhook-secret_0123456789"
KIE_KEY = "kie-log-test-key-0123456789abcdef"
DB_PASSWORD = "db-pass-0123456789"
SECRETS = (TOKEN, TOKEN.partition(":")[2], WEBHOOK_SECRET, KIE_KEY, DB_PASSWORD)
_SETTING_PREFIXES = ("BOT_", "TELEGRAM_", "WEBHOOK_", "KIE_", "DB_", "DATABASE_", "FLOOD_")


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any setting of ours, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    for key in ("PORT", "HOST", "PUBLIC_BASE_URL", "ENVIRONMENT", "LOG_FORMAT", "LOG_LEVEL"):
        env.pop(key, None)
    return env | {"FLOWS_PATH": str(ROOT / "flows.yaml")} | values


def secret_env(**values: str) -> dict[str, str]:
    return clean_env(
        BOT_TOKEN=TOKEN,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        KIE_API_KEY=KIE_KEY,
        DATABASE_URL=f"postgresql+asyncpg://bot:{DB_PASSWORD}@127.0.0.1:1/bot",
        **values,
    )


def parsed_lines(output: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON; fails naming the lines that are not."""
    lines = [line for line in output.splitlines() if line.strip()]
    parsed, bad = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert not bad, f"{len(bad)} of {len(lines)} lines are not JSON, e.g. {bad[:3]}"
    return parsed


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        leaked = [s for s in SECRETS if s in output]
        assert not leaked, f"secrets in the output: {leaked}\n{output}"


# ------------------------------------------------------------------ configure_logging


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, put back as it was (pytest's own handlers too) after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


def errors_counted() -> float:
    return REGISTRY.get_sample_value("trt_errors_total", {"kind": "exception"}) or 0.0


def test_configure_logging_twice_leaves_one_handler(root_logging: logging.Logger) -> None:
    logging.basicConfig(level=logging.WARNING, force=True)  # what `trt` used to install
    install_error_counter()
    first_stream, second_stream = io.StringIO(), io.StringIO()
    first = configure_logging(level="INFO", secrets=[TOKEN], stream=first_stream)
    assert root_logging.handlers == [first]
    second = configure_logging(level="INFO", secrets=[TOKEN], stream=second_stream)
    assert root_logging.handlers == [second]
    # The stack's wiring asks for the error counter again: the handler counts already.
    install_error_counter()
    assert root_logging.handlers == [second]

    counted = errors_counted()
    log = logging.getLogger("trt.test")
    log.warning("token %s in a line", TOKEN)
    try:
        raise RuntimeError(f"https://api.telegram.org/bot{TOKEN}/getMe failed")
    except RuntimeError:
        log.exception("the call failed")

    assert first_stream.getvalue() == ""
    text = second_stream.getvalue()
    assert TOKEN not in text and TOKEN.partition(":")[2] not in text
    warning, failure = parsed_lines(text)
    assert warning["event"] == f"token {REDACTED} in a line"
    assert failure["event"] == "the call failed"
    assert "Traceback (most recent call last)" in failure["exception"]
    assert f"bot{REDACTED}/getMe failed" in failure["exception"]
    assert errors_counted() == counted + 1


def test_console_lines_are_written_once_and_redacted(root_logging: logging.Logger) -> None:
    logging.basicConfig(level=logging.WARNING, force=True)
    stream = io.StringIO()
    configure_logging(level="INFO", json_lines=False, secrets=[KIE_KEY], stream=stream)
    configure_logging(level="INFO", json_lines=False, secrets=[KIE_KEY], stream=stream)
    log = logging.getLogger("trt.test")
    log.warning("key %s", KIE_KEY)
    try:
        raise RuntimeError(KIE_KEY)
    except RuntimeError:
        log.exception("the call failed")
    text = stream.getvalue()
    assert KIE_KEY not in text
    assert text.count(f"key {REDACTED}") == 1
    assert text.count("the call failed") == 1
    assert text.count("Traceback (most recent call last)") == 1


# ------------------------------------------------------------------ the command line

# The real `trt.cli.main()` in a forked `trt`, with the work of one subcommand replaced
# by tests/log_patch.py. (The zygote has imported the program but configured no
# logging: what the fork logs is what a cold start logs; `trt serve` below starts cold.)
COMMANDS = {
    "serve": (["serve"], "trt.serve:serve"),
    "run": (["run"], "trt.run:run_bot"),
    "migrate": (["migrate"], "storage.migrate:upgrade_to_head"),
    "flows paths": (["flows", "paths"], "trt.cli:flows_paths"),
    "pricing check": (["pricing", "check"], "trt.cli:pricing_check"),
}


def run_cli(
    tmp_path: Path, command: str, how: str = "log", **env: str
) -> subprocess.CompletedProcess[str]:
    argv, patch = COMMANDS[command]
    return warm.run(
        argv,
        env=secret_env(LOG_TEST_PATCH=patch, LOG_TEST_HOW=how, **env),
        cwd=tmp_path,
        prepare="tests.log_patch:install",
        timeout=120,
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_logs_each_record_once_as_one_json_line(
    tmp_path: Path, command: str
) -> None:
    result = run_cli(tmp_path, command, ENVIRONMENT="production")
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    lines = parsed_lines(result.stderr)
    events = [line["event"] for line in lines]
    calling = f"calling out with {REDACTED} and {REDACTED} and {REDACTED}"
    assert events.count(calling) == 1, events
    [failed] = [line for line in lines if line["event"] == "the call failed"]
    assert failed["level"] == "error" and failed["logger"] == "trt.test"
    assert "Traceback (most recent call last)" in failed["exception"]
    assert f"RuntimeError: refused {REDACTED} and {REDACTED}" in failed["exception"]
    assert result.stderr.count("Traceback") == 1


def test_console_mode_writes_each_record_once(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "run")
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert result.stderr.count("calling out with") == 1, result.stderr
    assert result.stderr.count("the call failed") == 1, result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_an_escaping_exception_is_logged_once_as_json(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", how="raise", ENVIRONMENT="production")
    assert result.returncode == 1, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    lines = parsed_lines(result.stderr)
    [failed] = [line for line in lines if "exception" in line]
    assert failed["level"] == "error"
    assert f"RuntimeError: escaped with {REDACTED}" in failed["exception"]
    assert result.stderr.count("Traceback") == 1


# ------------------------------------------------------------------ `trt serve` itself


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeBotAPI, FakeKie]]:
    async with FakeBotAPI() as api, FakeKie(api_key=KIE_KEY) as kie:
        yield api, kie


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_trt_serve_writes_each_record_once_redacted_on_one_line(
    fakes: tuple[FakeBotAPI, FakeKie], tmp_path: Path
) -> None:
    """The `trt` program, polling the fake Telegram, which answers with the token in its
    error descriptions: a failed getUpdates (a warning), and a failed /start answer (a
    traceback) whose apology fails too (a warning)."""
    api, kie = fakes
    database_url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    await asyncio.to_thread(upgrade_to_head, database_url)
    port = free_port()
    env = clean_env(
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE=api.base_url,
        KIE_API_KEY=KIE_KEY,
        KIE_BASE_URL=kie.base_url,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        ENVIRONMENT="production",
    )
    leak = f"Bad Request: chat not found for bot{TOKEN} ({KIE_KEY})"
    api.inject_error("getUpdates", 400, leak)
    api.inject_error("sendMessage", 400, leak, times=2)
    process = await asyncio.create_subprocess_exec(
        TRT, "serve", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        api.push_update(api.make_message_update(61, 61, "/start"))
        async with asyncio.timeout(60):
            while len([c for c in api.calls_of("sendMessage") if c.failed]) < 2:
                if process.returncode is not None:  # exited early: its stderr says why
                    break
                await asyncio.sleep(0.1)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, err = await process.communicate()
    stderr = err.decode()
    assert process.returncode == 0, stderr
    assert_no_secret(stderr)
    lines = parsed_lines(stderr)
    events = [line["event"] for line in lines]
    assert events[-1] == "stopped", events
    assert stderr.count("getUpdates failed") == 1, stderr
    assert stderr.count("could not send the apology") == 1, stderr
    [failed] = [line for line in lines if "failed [error" in line["event"]]
    assert stderr.count("failed [error") == 1, stderr
    assert "TelegramBadRequest" in failed["exception"]
    assert f"bot{REDACTED} ({REDACTED})" in failed["exception"]
    assert stderr.count("Traceback") == 1, stderr
