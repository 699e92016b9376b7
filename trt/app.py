"""aiogram's pieces as every entry point builds them: the Bot and the Dispatcher."""

from __future__ import annotations

from collections.abc import Sequence

from aiogram import Bot, Dispatcher, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.memory import SimpleEventIsolation

from engine.runtime import FlowEngine
from engine.telegram import RetryLater, install


def build_bot(token: str, api_base: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


def build_dispatcher(
    engine: FlowEngine, routers: Sequence[Router] = (), *, retry_later: RetryLater | None = None
) -> Dispatcher:
    """`routers` (payments, admin) come before the engine's, whose message handler takes
    everything; the engine's answer and error middlewares cover them all the same."""
    # One update at a time per chat within a process; the store's
    # compare-and-set keeps several processes correct.
    dispatcher = Dispatcher(events_isolation=SimpleEventIsolation())
    dispatcher.include_routers(*routers)
    if retry_later is None:
        install(dispatcher, engine)
    else:
        install(dispatcher, engine, retry_later)
    return dispatcher
