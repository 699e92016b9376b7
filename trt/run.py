"""`trt run`: long polling against Telegram, or, with no BOT_TOKEN, against a local one.

The local mode is what a newcomer gets from `make run` on a fresh machine:
the real bot, engine, database and KIE client, talking HTTP to our fake Bot API
server and our fake KIE server, with a terminal chat standing in for the
Telegram app. Either way one aiohttp server serves KIE callbacks, the media
links KIE fetches pictures through, and /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from yarl import URL

from engine.local.bot_api_server import FakeBotAPI
from engine.local.terminal_chat import run_terminal_chat
from flows.generation.settings import GenerationSettings
from kie.fake_server import FakeKie
from storage.migrate import migration_problem
from storage.settings import DatabaseSettings
from trt.app import build_bot
from trt.product import Product, background, open_product, product_routes
from trt.settings import Settings

log = logging.getLogger("trt")

LOCAL_TOKEN = "42:LOCAL"
LOCAL_CHAT = 1001


@contextlib.asynccontextmanager
async def _http(product: Product, settings: Settings, sock: socket.socket) -> AsyncIterator[None]:
    app = web.Application()
    product_routes(app, product, settings.webhook_secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def run_bot(settings: Settings, lang: str = "ru") -> int:
    """`lang`: the language the local chat's user speaks (their Telegram app's)."""
    if reason := await migration_problem():
        print(f"trt run: {reason} (make run does it for you)", file=sys.stderr)
        return 1
    generation = GenerationSettings()
    local = not settings.bot_token
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0) if local else (settings.host, settings.port))
    async with contextlib.AsyncExitStack() as exits:
        if local:
            api = await exits.enter_async_context(FakeBotAPI())
            bot = build_bot(LOCAL_TOKEN, api.base_url)
        else:
            assert settings.bot_token is not None
            bot = build_bot(settings.bot_token, settings.telegram_api_base)
        if generation.kie_api_key is None:
            fake_kie = await exits.enter_async_context(FakeKie())
            generation.kie_api_key, generation.kie_base_url = fake_kie.api_key, fake_kie.base_url
            # Its results are on 127.0.0.1, which result downloads refuse unless allowed.
            fake_host = URL(fake_kie.base_url).host or "127.0.0.1"
            generation.result_fetch_allow = (*generation.result_fetch_allow, fake_host)
            print(f"No KIE_API_KEY: a local KIE runs at {fake_kie.base_url}.")
        if generation.public_base_url is None and local:
            generation.public_base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        product = await open_product(
            exits,
            settings=settings,
            generation=generation,
            database=DatabaseSettings(),
            bot=bot,
        )
        await exits.enter_async_context(_http(product, settings, sock))
        await exits.enter_async_context(background(product))
        if not local:
            await bot.delete_webhook(drop_pending_updates=False)
            await product.dispatcher.start_polling(bot)
            return 0
        where = f"a local Telegram runs at {api.base_url}"
        print(f"No BOT_TOKEN: {where}. Type /start, then button numbers.")
        # One update at a time: the next poll then confirms an update only once it was
        # handled, which is what the scripted chat waits for before its next line.
        polling = asyncio.create_task(
            product.dispatcher.start_polling(bot, handle_signals=False, handle_as_tasks=False)
        )
        jobs = product.services.jobs

        async def pending() -> bool:
            return any(not job.final for job in await jobs.recent(LOCAL_CHAT, 5))

        try:
            await run_terminal_chat(
                api, LOCAL_CHAT, LOCAL_CHAT, language_code=lang, pending=pending
            )
        finally:
            await product.dispatcher.stop_polling()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run_bot(Settings())))
