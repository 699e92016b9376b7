"""The real stack for tests: our webhook app on a real port, the real aiogram Bot
talking HTTP to our fake Bot API server, and a chat that taps like a person.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine.loader import LoadedFlow, load_flow
from engine.local.bot_api_server import Call, FakeBotAPI
from engine.registry import Registry
from engine.runtime import FlowEngine
from engine.spec import PLACEHOLDER
from engine.store import StateStore
from engine.webhook import WEBHOOK_PATH
from flows.registry import build_registry
from trt.app import Service, build_bot, build_dispatcher, web_app

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


class Stack:
    def __init__(self, api: FakeBotAPI, engine: FlowEngine, url: str, http: aiohttp.ClientSession):
        self.api = api
        self.engine = engine
        self.url = url
        self.http = http

    async def post(self, update: dict[str, Any], secret: str | None = SECRET) -> int:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        async with self.http.post(self.url + WEBHOOK_PATH, json=update, headers=headers) as resp:
            await resp.read()
            return resp.status

    def chat(self, chat_id: int, language_code: str = "ru") -> Chat:
        return Chat(self, chat_id, language_code)


class Chat:
    """One private chat; remembers which message shows the current screen."""

    def __init__(self, stack: Stack, chat_id: int, language_code: str) -> None:
        self.stack = stack
        self.api = stack.api
        self.chat_id = chat_id
        self.language_code = language_code
        self.screen_message: int | None = None

    def _new_calls(self, before: int) -> list[Call]:
        return self.api.calls[before:]

    def _track(self, calls: list[Call]) -> None:
        for call in calls:
            if call.method in SCREEN_METHODS and not call.failed:
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
        calls = self._new_calls(before)
        self._track(calls)
        return calls

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


@asynccontextmanager
async def running_stack(
    store: StateStore,
    *,
    registry: Registry | None = None,
    flow: LoadedFlow | None = None,
    api: FakeBotAPI | None = None,
) -> AsyncIterator[Stack]:
    """`api`: share one fake Telegram between stacks, as two processes would."""
    own_api = api is None
    api = api or FakeBotAPI()
    base = await api.start() if own_api else api.base_url
    flow = flow or load_flow(ROOT / "flows.yaml")
    engine = FlowEngine(flow, registry or build_registry(), store)
    bot = build_bot(TOKEN, base)
    service = Service(bot, build_dispatcher(engine), engine)
    runner = web.AppRunner(web_app(service, SECRET))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Stack(api, engine, f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()
        await bot.session.close()
        if own_api:
            await api.stop()
