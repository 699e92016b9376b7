"""aiogram's pieces as every entry point builds them: the Bot and the Dispatcher."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.memory import SimpleEventIsolation

from engine.runtime import FlowEngine
from engine.telegram import install


def build_bot(token: str, api_base: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


def build_dispatcher(engine: FlowEngine) -> Dispatcher:
    # One update at a time per chat within a process; the store's
    # compare-and-set keeps several processes correct.
    dispatcher = Dispatcher(events_isolation=SimpleEventIsolation())
    install(dispatcher, engine)
    return dispatcher
