"""`trt serve` itself: as a process against the fake Telegram and the fake KIE (webhook mode
and polling), failing fast on bad settings, and shutting down without dropping work.

The process is forked from a warm interpreter (tests.warm); test_logging_once starts
the `trt` console script cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import trt.product as product_module
import trt.serve as serve_module
from engine.local.bot_api_server import FakeBotAPI
from engine.registry import Context, Outcome
from kie.fake_server import FakeKie
from storage.migrate import upgrade_to_head
from tests.service_support import mini_flow
from tests.warm import Trt
from trt.settings import Settings
from trt.webhook import SECRET_HEADER

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123456:AAFakeTokenForTheServeTests_abcdefgh"
WEBHOOK_SECRET = "serve-test-secret_0123456789"
_SETTING_PREFIXES = ("BOT_", "TELEGRAM_", "WEBHOOK_", "KIE_", "DB_", "DATABASE_", "FLOOD_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any setting of ours, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    for key in ("PORT", "HOST", "PUBLIC_BASE_URL", "ENVIRONMENT", "LOG_FORMAT", "FLOWS_PATH"):
        env.pop(key, None)
    return env | values


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeBotAPI, FakeKie]]:
    async with FakeBotAPI() as api, FakeKie() as kie:
        yield api, kie


def serve_env(
    api: FakeBotAPI, kie: FakeKie, database_url: str, port: int, **extra: str
) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    return clean_env(
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE=api.base_url,
        KIE_API_KEY=kie.api_key,
        KIE_BASE_URL=kie.base_url,
        PUBLIC_BASE_URL=base,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        ENVIRONMENT="production",
        **extra,
    )


async def until_ready(http: aiohttp.ClientSession, base: str, process: Any) -> None:
    async with asyncio.timeout(60):
        while True:
            assert process.returncode is None, "trt serve exited early"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)


async def stop(process: Trt) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        code = await process.wait()
    return code, process.stderr()


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


async def test_serve_with_a_webhook(
    fakes: tuple[FakeBotAPI, FakeKie], migrated_database_url: str, tmp_path: Path
) -> None:
    api, kie = fakes
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(api, kie, migrated_database_url, port, WEBHOOK_URL=base + "/telegram/webhook")
    process = Trt(["serve"], env=env, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await until_ready(http, base, process)
            [hook] = api.calls_of("setWebhook")
            assert hook.params["url"] == base + "/telegram/webhook"
            assert hook.params["secret_token"] == WEBHOOK_SECRET
            assert {"message", "callback_query"} <= set(hook.params["allowed_updates"])
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200
            update = api.make_message_update(51, 51, "/start")
            async with http.post(base + "/telegram/webhook", json=update) as resp:
                assert resp.status == 401
            headers = {SECRET_HEADER: WEBHOOK_SECRET}
            async with http.post(base + "/telegram/webhook", json=update, headers=headers) as resp:
                assert resp.status == 200
            await api.wait_for_call("sendMessage")
            async with http.get(base + "/metrics") as resp:
                body = await resp.text()
            assert 'trt_updates_total{outcome="ok",type="message"} 1.0' in body
    finally:
        code, stderr = await stop(process)
    assert code == 0, stderr
    lines = json_lines(stderr)
    events = [x["event"] for x in lines]
    assert "webhook registered" in events and events[-1] == "stopped"
    assert TOKEN not in stderr and WEBHOOK_SECRET not in stderr


async def test_serve_with_long_polling(fakes: tuple[FakeBotAPI, FakeKie], tmp_path: Path) -> None:
    """Also `--migrate` (the container's start): a new database is migrated, then served."""
    api, kie = fakes
    database_url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    port = free_port()
    env = serve_env(api, kie, database_url, port)
    process = Trt(["serve", "--migrate"], env=env, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await until_ready(http, f"http://127.0.0.1:{port}", process)
        assert api.calls_of("deleteWebhook") and not api.calls_of("setWebhook")
        api.push_update(api.make_message_update(52, 52, "/start"))
        await api.wait_for_call("sendMessage", timeout=20)
        # Confirmed: the next fetch asks for the updates after it.
        await api.wait_for_call("getUpdates", lambda c: int(c.params.get("offset") or 0) > 0)
    finally:
        code, stderr = await stop(process)
    assert code == 0, stderr
    assert "long polling" in [x["event"] for x in json_lines(stderr)]


# ------------------------------------------------------------------ failing fast


async def run_serve(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = Trt(["serve"], env=env, cwd=cwd)
    async with asyncio.timeout(60):
        code = await process.wait()
    return code, process.stderr()


async def test_missing_settings_are_named_and_nothing_starts(tmp_path: Path) -> None:
    code, stderr = await run_serve(clean_env(), tmp_path)
    assert code == 2
    for name in ("BOT_TOKEN", "KIE_API_KEY", "PUBLIC_BASE_URL", "WEBHOOK_SECRET"):
        assert name in stderr
    assert "Traceback" not in stderr


async def test_malformed_settings_are_named_without_their_values(tmp_path: Path) -> None:
    env = clean_env(
        PORT="eighty",
        BOT_TOKEN="not-a-token-but-a-secret-value",
        DB_POOL_SIZE="0",
        WEBHOOK_URL="ftp://example.com/hook",
    )
    code, stderr = await run_serve(env, tmp_path)
    assert code == 2
    for name in ("PORT", "BOT_TOKEN", "DB_POOL_SIZE", "WEBHOOK_URL"):
        assert name in stderr
    assert "not-a-token-but-a-secret-value" not in stderr and "Traceback" not in stderr


async def test_an_unmigrated_database_is_refused(
    fakes: tuple[FakeBotAPI, FakeKie], tmp_path: Path
) -> None:
    api, kie = fakes
    env = serve_env(api, kie, f"sqlite+aiosqlite:///{tmp_path}/empty.db", free_port())
    code, stderr = await run_serve(env, tmp_path)
    assert code == 1 and "trt migrate" in stderr
    assert api.calls_of("setWebhook") == [] and api.calls_of("getUpdates") == []


# ------------------------------------------------------------------ graceful shutdown


async def test_shutdown_finishes_the_update_in_flight_and_refuses_new_ones(
    fakes: tuple[FakeBotAPI, FakeKie], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, kie = fakes
    database_url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    await asyncio.to_thread(upgrade_to_head, database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    for key, value in serve_env(api, kie, database_url, port).items():
        monkeypatch.setenv(key, value)
    finished: list[int] = []

    async def slow(ctx: Context) -> Outcome:
        await asyncio.sleep(0.8)
        finished.append(ctx.user_id)
        return Outcome(notice="done")

    real_build = product_module.build_product

    def with_slow_action(**kwargs: Any) -> Any:
        product = real_build(**kwargs)
        product.engine.registry.actions["work"] = slow
        return product

    monkeypatch.setattr(product_module, "build_product", with_slow_action)
    settings = Settings(
        FLOWS_PATH=str(mini_flow(tmp_path)),
        WEBHOOK_URL=base + "/telegram/webhook",
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE=api.base_url,
        HOST="127.0.0.1",
        PORT=port,
        SHUTDOWN_TIMEOUT_S=10,
    )
    stopping = asyncio.Event()
    ready = asyncio.Event()
    service = asyncio.create_task(serve_module.serve(settings, stop=stopping, on_ready=ready.set))
    headers = {SECRET_HEADER: WEBHOOK_SECRET}
    async with aiohttp.ClientSession() as http:
        await asyncio.wait_for(ready.wait(), 30)
        start = api.make_message_update(53, 53, "/start")
        async with http.post(base + "/telegram/webhook", json=start, headers=headers) as resp:
            assert resp.status == 200
        screen = api.calls_of("sendMessage")[-1].result
        data = next(
            b["callback_data"]
            for row in screen["reply_markup"]["inline_keyboard"]
            for b in row
            if b["text"] == "Работа"
        )
        tap = api.make_callback_update(53, 53, screen["message_id"], data)

        async def post(update: dict[str, Any]) -> int:
            async with http.post(base + "/telegram/webhook", json=update, headers=headers) as r:
                return r.status

        in_flight = asyncio.create_task(post(tap))
        await asyncio.sleep(0.3)
        stopping.set()
        await asyncio.sleep(0.1)
        late = api.make_message_update(54, 54, "/start")
        try:
            late_status = await post(late)
        except aiohttp.ClientError:
            late_status = 0  # the listener is closed: also a refusal
        assert await in_flight == 200
    assert await asyncio.wait_for(service, 30) == 0
    assert finished == [53]
    assert late_status in (0, 503)
    assert [c for c in api.calls_of("sendMessage") if c.params["chat_id"] == 54] == []
