"""aiogram's pieces as every entry point builds them: the Bot and the Dispatcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiogram import Bot, Dispatcher, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.methods.base import Response, TelegramMethod

from engine.runtime import FlowEngine
from engine.telegram import RetryLater, install
from trt.per_chat import ChatLocks, NoFsmStorage


class KeepResponseTypes(BaseRequestMiddleware):
    """Keeps alive the `Response[T]` classes aiogram reads replies with. aiogram makes one
    per call (`Response[method.__returning__]`) and pydantic caches a parametrized generic
    only weakly, so after a garbage collection it is built again: a whole pydantic class,
    147 times in 540 updates in bench/service_bench.py's profile, ~10 % of the CPU."""

    def __init__(self) -> None:
        self._kept: dict[Any, Any] = {}

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Any:
        returning = method.__returning__
        if returning not in self._kept:
            self._kept[returning] = Response[returning]  # type: ignore[valid-type]
        return await make_request(bot, method)


def build_bot(token: str, api_base: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
    bot = Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    bot.session.middleware(KeepResponseTypes())
    return bot


def build_dispatcher(
    engine: FlowEngine, routers: Sequence[Router] = (), *, retry_later: RetryLater | None = None
) -> Dispatcher:
    """`routers` (payments, admin) come before the engine's, whose message handler takes
    everything; the engine's answer and error middlewares cover them all the same."""
    # One update at a time per chat within a process; the store's
    # compare-and-set keeps several processes correct. Nothing kept for idle chats.
    dispatcher = Dispatcher(storage=NoFsmStorage(), events_isolation=ChatLocks())
    dispatcher.include_routers(*routers)
    if retry_later is None:
        install(dispatcher, engine)
    else:
        install(dispatcher, engine, retry_later)
    return dispatcher
