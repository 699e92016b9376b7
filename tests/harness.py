"""The real stack for tests: our webhook app on a real port, the real aiogram Bot
talking HTTP to our fake Bot API server, and a chat that taps like a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiogram import Bot
from aiohttp import web
from yarl import URL

from engine.loader import LoadedFlow
from engine.local.bot_api_server import Call, FakeBotAPI
from engine.registry import Action
from engine.runtime import FlowEngine
from engine.spec import PLACEHOLDER
from engine.store import StateStore
from flows.generation.settings import GenerationSettings
from flows.payments.settings import PaymentSettings
from kie.client import KieClient
from kie.fake_script import Behaviour
from kie.fake_server import FakeKie
from pricing.catalog import Catalog
from pricing.source import CatalogSource
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.jobs import JobStore
from storage.migrate import upgrade_to_head
from storage.settings import DatabaseSettings
from trt.app import build_bot
from trt.flood import FloodLimits
from trt.product import Product, background, build_product, product_routes
from trt.webhook import WEBHOOK_PATH
from trt.wiring import ServiceRoutes

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret_1"
TOKEN = "42:TEST"
SCREEN_METHODS = ("sendMessage", "editMessageText")


@dataclass(frozen=True, slots=True)
class Screen:
    message_id: int
    text: str
    buttons: list[list[tuple[str, str]]]

    def flat(self) -> list[tuple[str, str]]:
        return [b for row in self.buttons for b in row]

    def data_of(self, label: str) -> str:
        for text, data in self.flat():
            if text == label:
                return data
        raise AssertionError(f"no button {label!r} on screen: {[t for t, _ in self.flat()]}")


_PRICES = CatalogSource()
_sqlite_template: Path | None = None
_template_dir: tempfile.TemporaryDirectory[str] | None = None  # removed at process exit


def migrated_sqlite(path: Path) -> str:
    """The URL of a migrated SQLite database at `path`: a copy of one this process
    migrated once (the migrations themselves are tested in test_migrations.py)."""
    global _sqlite_template, _template_dir
    if _sqlite_template is None:
        _template_dir = tempfile.TemporaryDirectory(prefix="trt-template-")
        template = Path(_template_dir.name) / "migrated.db"
        upgrade_to_head(f"sqlite+aiosqlite:///{template}")
        _sqlite_template = template
    # The backup API copies a consistent database whatever its journal mode.
    with sqlite3.connect(_sqlite_template) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return f"sqlite+aiosqlite:///{path}"


class Stack:
    def __init__(
        self,
        api: FakeBotAPI,
        engine: FlowEngine,
        url: str,
        http: aiohttp.ClientSession,
        *,
        product: Product,
        kie: FakeKie,
        routes: ServiceRoutes | None = None,
    ):
        self.routes = routes
        self.api = api
        self.engine = engine
        self.url = url
        self.http = http
        self.product = product
        self.kie = kie

    async def post(self, update: dict[str, Any], secret: str | None = SECRET) -> int:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        async with self.http.post(self.url + WEBHOOK_PATH, json=update, headers=headers) as resp:
            await resp.read()
            return resp.status

    def chat(self, chat_id: int, language_code: str = "ru") -> Chat:
        return Chat(self, chat_id, language_code)

    async def write_records(self) -> None:
        """Writes the handled update ids now (the service writes them behind)."""
        assert self.routes is not None
        await self.routes.processor.processed.flush()

    @property
    def jobs(self) -> JobStore:
        """The job rows as storage keeps them, for arranging and inspecting."""
        return JobStore(self.product.services.db)


class Chat:
    """One private chat; remembers which message shows the current screen."""

    def __init__(self, stack: Stack, chat_id: int, language_code: str) -> None:
        self.stack = stack
        self.api = stack.api
        self.chat_id = chat_id
        self.language_code = language_code
        self.screen_message: int | None = None
        self._seen = len(self.api.calls)

    def _new_calls(self, before: int) -> list[Call]:
        return self.api.calls[before:]

    def _catch_up(self) -> None:
        """Screens the bot showed on its own (a finished job) count too."""
        calls = self.api.calls[self._seen :]
        self._seen += len(calls)
        self._track(calls)

    def _track(self, calls: list[Call]) -> None:
        """Follows the screen: this chat's messages with a keyboard (every screen has one;
        progress messages and results of background jobs have none)."""
        for call in calls:
            if call.method not in SCREEN_METHODS or call.failed:
                continue
            if int(call.params.get("chat_id", 0)) != self.chat_id:
                continue
            if not call.params.get("reply_markup"):
                continue
            if call.method == "editMessageText":
                self.screen_message = int(call.params["message_id"])
            else:
                self.screen_message = int(call.result["message_id"])

    async def send(self, text: str) -> list[Call]:
        update = self.api.make_message_update(
            self.chat_id, self.chat_id, text, language_code=self.language_code
        )
        return await self.post(update)

    async def post(self, update: dict[str, Any]) -> list[Call]:
        before = len(self.api.calls)
        status = await self.stack.post(update)
        assert status == 200, status
        self._catch_up()
        return self._new_calls(before)

    async def tap_data(self, data: str, message_id: int | None = None) -> tuple[list[Call], str]:
        """Taps; returns the calls made and the callback query id, answered exactly once."""
        mid = message_id if message_id is not None else self.screen_message
        assert mid is not None, "no screen to tap on"
        update = self.api.make_callback_update(
            self.chat_id, self.chat_id, mid, data, language_code=self.language_code
        )
        query_id = update["callback_query"]["id"]
        calls = await self.post(update)
        assert self.api.answered_callbacks.get(query_id) == 1, (
            query_id,
            self.api.answered_callbacks,
        )
        return calls, query_id

    async def tap(self, label: str) -> list[Call]:
        calls, _ = await self.tap_data(self.screen().data_of(label))
        return calls

    def screen(self) -> Screen:
        self._catch_up()
        assert self.screen_message is not None, "the bot has shown no screen"
        msg = self.api.messages[self.chat_id][self.screen_message]
        markup = msg.get("reply_markup") or {}
        rows = [
            [(b["text"], b.get("callback_data", "")) for b in row]
            for row in markup.get("inline_keyboard", [])
        ]
        return Screen(self.screen_message, msg.get("text", ""), rows)


def answer_text(calls: list[Call], query_id: str | None = None) -> str | None:
    """The text the callback was answered with. Concurrent taps see each other's calls, so
    pass their `query_id` to pick their own answer."""
    answers = [
        c
        for c in calls
        if c.method == "answerCallbackQuery"
        and not c.failed
        and (query_id is None or c.params["callback_query_id"] == query_id)
    ]
    assert len(answers) <= 1, answers
    return answers[0].params.get("text") if answers else None


def screen_pattern(flow: LoadedFlow, state: str, locale: str) -> re.Pattern[str]:
    """The state's text with placeholders as wildcards; Telegram shows HTML as plain text."""
    text = flow.spec.states[state].text[locale]
    text = re.sub(r"</?[a-z]+>", "", text)
    parts = PLACEHOLDER.split(text)
    regex = "".join(re.escape(p) if i % 2 == 0 else ".*?" for i, p in enumerate(parts))
    return re.compile(regex.replace(re.escape("{{"), r"\{").replace(re.escape("}}"), r"\}"), re.S)


def kie_host(kie: FakeKie) -> str:
    """The fake KIE's host, for RESULT_FETCH_ALLOW (its results are on a loopback address)."""
    host = URL(kie.base_url).host
    assert host is not None
    return host


async def close_plain_http_session(bot: Bot) -> None:
    """Closes the Bot's HTTP session without aiogram's 250 ms wait for TLS connections to
    close: the fake Telegram speaks plain HTTP, and the suite builds hundreds of stacks."""
    session = getattr(bot.session, "_session", None)
    if session is None:  # an aiogram without the attribute: its own close, wait and all
        await bot.session.close()
    elif not session.closed:
        await session.close()


@asynccontextmanager
async def running_stack(
    store: StateStore | None = None,
    *,
    actions: dict[str, Action] | None = None,
    flow_path: Path | None = None,
    api: FakeBotAPI | None = None,
    kie: FakeKie | None = None,
    db_url: str | None = None,
    settings: GenerationSettings | None = None,
    catalog: Catalog | None = None,
    kie_timeout_s: float = 5,
    payment_settings: PaymentSettings | None = None,
    flood: FloodLimits | None = None,
    flood_clock: Callable[[], float] = time.monotonic,
    token: str = TOKEN,
    poll_interval_s: float = 0.2,
) -> AsyncIterator[Stack]:
    """The whole product on real HTTP: our webhook app on a real port, the real Bot talking
    to the fake Telegram, the real KIE client talking to the fake KIE, a real database.

    `store`: the conversation store (default: SQL on the same database). `actions`
    replace product actions (tests that count runs or make one fail). `api`, `kie` and
    `db_url`: share them between stacks, as two processes would. `flood`: per-user
    flood control as `trt serve` has it (off by default: tests tap faster than people),
    its buckets filling by `flood_clock`. `poll_interval_s`: the job poller's and hold
    sweeper's pause between passes.
    """
    async with contextlib.AsyncExitStack() as exits:
        if api is None:
            api = await exits.enter_async_context(FakeBotAPI())
        if kie is None:
            kie = await exits.enter_async_context(FakeKie(default=Behaviour(run_s=0.05)))
        if db_url is None:
            tmp = exits.enter_context(tempfile.TemporaryDirectory())
            db_url = await asyncio.to_thread(migrated_sqlite, Path(tmp) / "bot.db")
        db = create_engine(DatabaseSettings(database_url=db_url))
        exits.push_async_callback(db.dispose)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = settings or GenerationSettings(
            KIE_API_KEY=kie.api_key,
            KIE_BASE_URL=kie.base_url,
            PUBLIC_BASE_URL=url,
            POLL_INTERVAL_S=poll_interval_s,
            # The fake KIE serves its results from 127.0.0.1: let delivery download them.
            RESULT_FETCH_ALLOW=kie_host(kie),
        )
        bot = build_bot(token, api.base_url)
        exits.push_async_callback(close_plain_http_session, bot)
        client = KieClient(kie.base_url, kie.api_key, backoff_s=0.01, timeout_s=kie_timeout_s)
        exits.push_async_callback(client.close)
        product = build_product(
            bot=bot,
            store=store or SqlStateStore(db),
            db=db,
            flows_path=flow_path or ROOT / "flows.yaml",
            settings=settings,
            kie=client,
            media_secret="test-media-secret",
            # The price file read and validated once per process, not once per stack; it
            # is reread all the same if it changes.
            catalog=catalog if catalog is not None else _PRICES,
            payment_settings=payment_settings or PaymentSettings(),
            flood=flood,
            flood_clock=flood_clock,
        )
        product.engine.registry.actions.update(actions or {})
        app = web.Application()
        routes = product_routes(app, product, SECRET)
        runner = web.AppRunner(app)
        await runner.setup()
        exits.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        await exits.enter_async_context(background(product))
        http = await exits.enter_async_context(aiohttp.ClientSession())
        yield Stack(api, product.engine, url, http, product=product, kie=kie, routes=routes)
