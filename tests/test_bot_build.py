"""The Bot every entry point builds (trt.app.build_bot)."""

from __future__ import annotations

import gc
import weakref

from aiogram.methods.base import Response
from aiogram.types import Message, TelegramObject

from engine.local.bot_api_server import FakeBotAPI
from trt.app import KeepResponseTypes, build_bot


class Marker(TelegramObject):
    """A reply type nothing else in the process uses."""


def test_pydantic_keeps_a_parametrized_reply_class_only_weakly() -> None:
    """Why KeepResponseTypes exists: aiogram makes `Response[T]` for every reply, and
    without a strong reference pydantic builds the class again after a collection."""
    kept = weakref.ref(Response[Marker])
    gc.collect()
    assert kept() is None


async def test_the_bot_keeps_the_reply_classes_it_has_used() -> None:
    async with FakeBotAPI() as api:
        bot = build_bot("42:TEST", api.base_url)
        try:
            [keeper] = [m for m in bot.session.middleware if isinstance(m, KeepResponseTypes)]
            await bot.send_message(1, "hello")
            await bot.send_message(1, "again")
            gc.collect()
            assert list(keeper._kept.values()) == [Response[Message]]
        finally:
            await bot.session.close()
