"""`trt run`: long polling against Telegram, or, with no BOT_TOKEN, against a local one.

The local mode is what a newcomer gets from `make run` on a fresh machine:
the real bot, engine and database, talking HTTP to our fake Bot API server,
with a terminal chat standing in for the Telegram app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from engine.local.bot_api_server import FakeBotAPI
from engine.local.terminal_chat import run_terminal_chat
from engine.store import MemoryStore, StateStore
from trt.app import build_bot, build_dispatcher, build_engine
from trt.settings import Settings

log = logging.getLogger("trt")

LOCAL_TOKEN = "42:LOCAL"
LOCAL_CHAT = 1001


class NotMigrated(RuntimeError):
    pass


async def _store(settings: Settings) -> StateStore:
    if settings.state_store == "memory":
        return MemoryStore()
    from storage.conversation_store import SqlStateStore
    from storage.db import create_engine
    from storage.migrate import current_revision, head_revision
    from storage.settings import DatabaseSettings

    # Refuse to start on an old schema rather than fail on the first update.
    current, head = await asyncio.to_thread(current_revision), head_revision()
    if current != head:
        raise NotMigrated(
            f"the database is at migration {current or 'none'}, the code needs {head}: "
            "run `trt migrate` (make run does it for you)"
        )
    return SqlStateStore(create_engine(DatabaseSettings()))


async def run_bot(settings: Settings) -> int:
    try:
        store = await _store(settings)
    except NotMigrated as exc:
        print(f"trt run: {exc}", file=sys.stderr)
        return 1
    engine = build_engine(settings.flows_path, store)
    dispatcher = build_dispatcher(engine)
    if settings.bot_token:
        bot = build_bot(settings.bot_token, settings.telegram_api_base)
        await bot.delete_webhook(drop_pending_updates=False)
        await dispatcher.start_polling(bot)
        return 0

    async with FakeBotAPI() as api:
        base = await api.start()
        bot = build_bot(LOCAL_TOKEN, base)
        print(f"No BOT_TOKEN: a local Telegram runs at {base}. Type /start, then button numbers.")
        polling = asyncio.create_task(dispatcher.start_polling(bot, handle_signals=False))
        try:
            await run_terminal_chat(api, LOCAL_CHAT, LOCAL_CHAT)
        finally:
            await dispatcher.stop_polling()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
            await bot.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run_bot(Settings())))
