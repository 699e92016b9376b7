"""The composition root: the engine, the product's registry, storage and aiogram, wired once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.memory import SimpleEventIsolation
from aiohttp import web

from engine.loader import load_flow
from engine.runtime import FlowEngine
from engine.store import StateStore
from engine.telegram import install
from engine.webhook import add_webhook
from flows.registry import build_registry


def build_bot(token: str, api_base: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


def build_engine(flows_path: Path, store: StateStore) -> FlowEngine:
    return FlowEngine(load_flow(flows_path), build_registry(), store)


def build_dispatcher(engine: FlowEngine) -> Dispatcher:
    # One update at a time per chat within a process; the store's
    # compare-and-set keeps several processes correct.
    dispatcher = Dispatcher(events_isolation=SimpleEventIsolation())
    install(dispatcher, engine)
    return dispatcher


@dataclass(slots=True)
class Service:
    bot: Bot
    dispatcher: Dispatcher
    engine: FlowEngine


def web_app(service: Service, secret: str) -> web.Application:
    app = web.Application()
    add_webhook(app, service.dispatcher, service.bot, secret)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    return app
