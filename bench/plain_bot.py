"""The floor of `bench.service_bench`: a plain aiogram 3 webhook bot, as one would write it.

Run by the benchmark as ``python -m bench.plain_bot`` with the same settings names as
`trt serve`: BOT_TOKEN, TELEGRAM_API_BASE, WEBHOOK_SECRET, WEBHOOK_URL, HOST, PORT.

An ``aiohttp.web`` application with aiogram's ``SimpleRequestHandler`` (the secret token
checked, the update handled before the webhook answers, as `trt serve` does) and
``setup_application``; ``Dispatcher(storage=MemoryStorage(), events_isolation=
SimpleEventIsolation())`` (the per-chat lock `trt serve` has too); each user's screen in a
dict. /start sends the main menu (sendMessage with an inline keyboard, parse_mode HTML);
every tap answers the callback query and edits the message to the screen the button
names (answerCallbackQuery + editMessageText): the Bot API calls the trt engine makes for
a navigation tap, in the same order. On start-up it registers its webhook with the secret,
as `trt serve` does. ``GET /healthz`` answers 200.

Logs: JSON lines on stderr at INFO, one per update (update id, type, user, outcome, ms),
like `trt serve` in production; aiogram's own per-update line is silenced, as there.

`SCREENS` is the menu (also read by the benchmark, to check every screen it is shown):
fifteen screens, two to four rows of buttons each counting the Back / Main menu row that
every screen but the main menu has, texts of a few hundred characters with HTML.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.filters import CommandStart
from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
    Update,
)
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

WEBHOOK_PATH = "/telegram/webhook"  # the same path as trt.webhook
ROOT = "main"
BACK = "« Back"
MAIN_MENU = "≡ Main menu"
BACK_DATA = "back"
MAIN_DATA = "home"
GO_PREFIX = "go:"

log = logging.getLogger("floor")


@dataclass(frozen=True, slots=True)
class Screen:
    text: str  # Telegram HTML
    # The screen's own buttons as (label, target) rows; every screen but the root gets
    # one more row: Back (to `parent`) and Main menu.
    rows: tuple[tuple[tuple[str, str], ...], ...]
    parent: str | None


def _text(title: str, body: str) -> str:
    return f"<b>{title}</b>\n{body}"


SCREENS: dict[str, Screen] = {
    "main": Screen(
        _text(
            "Main menu",
            "Welcome! This bot turns a few words or a picture into images, videos and "
            "sounds. Pick a section below: the <i>catalog</i> lists every model with its "
            "price, <i>account</i> shows your balance and your past orders, and "
            "<i>settings</i> changes the language and the notifications. Nothing is "
            "charged until a result is delivered.",
        ),
        (
            (("🖼 Catalog", "catalog"), ("🗂 Orders", "orders")),
            (("💰 Account", "account"), ("⚙️ Settings", "settings")),
            (("❓ Help", "help"), ("ℹ️ About", "about")),
        ),
        None,
    ),
    "catalog": Screen(
        _text(
            "Catalog",
            "Every model we sell, by the kind of work it does. Free models are limited to a "
            "few runs a day; paid ones are charged per result, at the price shown on the "
            "model's page, and only once the result has reached you. Choose a kind of work:",
        ),
        (
            (("📷 Pictures", "pictures"), ("🎬 Videos", "videos")),
            (("🎵 Sounds", "sounds"),),
        ),
        "main",
    ),
    "pictures": Screen(
        _text(
            "Pictures",
            "Text to image and image to image: describe what you want, or send a picture "
            "and say what to change. Results come as full-size files. Portraits keep faces "
            "recognisable; landscapes are tuned for wide scenes and long prompts.",
        ),
        ((("Portraits", "portraits"), ("Landscapes", "landscapes")),),
        "catalog",
    ),
    "portraits": Screen(
        _text(
            "Portraits",
            "Model: <i>portrait-xl</i>. Price: 12 ₽ per picture, 1024×1024 pixels. Send a "
            "description of the person, the light and the style; a reference photo is "
            "optional. Typical time: twenty seconds. Nothing is charged if it fails.",
        ),
        ((("Landscapes", "landscapes"),),),
        "pictures",
    ),
    "landscapes": Screen(
        _text(
            "Landscapes",
            "Model: <i>scene-wide</i>. Price: 15 ₽ per picture, 1792×1024 pixels. Describe "
            "the place, the season and the time of day; the longer the prompt, the more "
            "detail. Typical time: half a minute. Nothing is charged if it fails.",
        ),
        ((("Portraits", "portraits"),),),
        "pictures",
    ),
    "videos": Screen(
        _text(
            "Videos",
            "Text to video and image to video, five or ten seconds long, with or without "
            "sound. Videos take a few minutes; the bot tells you when yours is ready, and "
            "you can keep using the menus meanwhile. Prices start at 60 ₽ per clip.",
        ),
        ((("Short clips", "clips"),),),
        "catalog",
    ),
    "clips": Screen(
        _text(
            "Short clips",
            "Model: <i>clip-5</i>. Price: 60 ₽ per five-second clip, 720p. Describe the "
            "scene and the camera's movement, or send a picture to bring to life. Typical "
            "time: three minutes. Nothing is charged if it fails or times out.",
        ),
        ((("🎵 Sounds", "sounds"),),),
        "videos",
    ),
    "sounds": Screen(
        _text(
            "Sounds",
            "Music and voice: a tune from a description of its mood and instruments, or "
            "speech from a text in one of twelve voices. Results are MP3 files of up to "
            "two minutes. Prices start at 8 ₽ per file; a preview is free.",
        ),
        ((("🎬 Videos", "videos"),),),
        "catalog",
    ),
    "orders": Screen(
        _text(
            "Orders",
            "Your last ten orders, newest first, with their state: done, running or "
            "refunded. Tap an order in the history to get its result again; results are "
            "kept for thirty days. A failed order is refunded in full, automatically.",
        ),
        ((("💰 Account", "account"),),),
        "main",
    ),
    "account": Screen(
        _text(
            "Account",
            "Available: 250.00 ₽. On hold: 0.00 ₽.\nMoney on hold belongs to orders still "
            "running and is charged only when their result is delivered; if an order "
            "fails, it returns to your balance. Top up with Telegram Stars below.",
        ),
        ((("💳 Top up", "topup"),),),
        "main",
    ),
    "topup": Screen(
        _text(
            "Top up",
            "Packages: 100 ₽ for 50 Stars, 300 ₽ for 150 Stars, 1000 ₽ for 500 Stars. The "
            "balance is credited as soon as Telegram confirms the payment, and a receipt "
            "arrives in this chat. Stars that were not spent can be refunded.",
        ),
        ((("🗂 Orders", "orders"),),),
        "account",
    ),
    "settings": Screen(
        _text(
            "Settings",
            "Language: English. Notifications: on.\nThe language changes every screen and "
            "every message of the bot; notifications tell you when a long order (a video, "
            "a batch of pictures) is done, even when you have left the chat.",
        ),
        ((("🌐 Language", "language"),),),
        "main",
    ),
    "language": Screen(
        _text(
            "Language",
            "The bot speaks English and Russian. It follows the language of your Telegram "
            "app when you first start it; choose here to change it for good. Model names "
            "and your own prompts are never translated.",
        ),
        ((("❓ Help", "help"),),),
        "settings",
    ),
    "help": Screen(
        _text(
            "Help",
            "Choose a kind of work, a model and its parameters, describe the task and "
            "confirm. You are charged only after the result is delivered. Something went "
            "wrong? Every error message carries a code: send it to support with the time.",
        ),
        ((("ℹ️ About", "about"),),),
        "main",
    ),
    "about": Screen(
        _text(
            "About",
            "A storefront for AI models: pictures, videos and sounds, paid per result. "
            "Prices follow the providers' and are shown before you confirm. Your prompts "
            "and pictures are used for your orders only and deleted after thirty days.",
        ),
        ((("❓ Help", "help"),),),
        "main",
    ),
}


def target_of(current: str, data: str) -> str | None:
    """Where a tap on `data` leads from `current`; None for data that is not ours."""
    if data == BACK_DATA:
        return SCREENS[current].parent or ROOT
    if data == MAIN_DATA:
        return ROOT
    target = data.removeprefix(GO_PREFIX)
    return target if data.startswith(GO_PREFIX) and target in SCREENS else None


def keyboard(name: str) -> InlineKeyboardMarkup:
    screen = SCREENS[name]
    rows = [
        [
            InlineKeyboardButton(text=label, callback_data=GO_PREFIX + target)
            for label, target in row
        ]
        for row in screen.rows
    ]
    if screen.parent is not None:
        rows.append(
            [
                InlineKeyboardButton(text=BACK, callback_data=BACK_DATA),
                InlineKeyboardButton(text=MAIN_MENU, callback_data=MAIN_DATA),
            ]
        )
    return InlineKeyboardMarkup(inline_keyboard=rows)


# ---- logging: one JSON line per update ----------------------------------------------


class JsonLines(logging.Formatter):
    _PLAIN = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line |= {k: v for k, v in vars(record).items() if k not in self._PLAIN}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class LogUpdates(BaseMiddleware):
    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await handler(event, data)
            outcome = "ok"
            return result
        finally:
            user = data.get("event_from_user")
            log.info(
                "update %s",
                outcome,
                extra={
                    "update_id": event.update_id,
                    "update_type": event.event_type,
                    "user_id": user.id if user is not None else None,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


# ---- the bot --------------------------------------------------------------------------


def menu_router() -> Router:
    menu = {name: (screen.text, keyboard(name)) for name, screen in SCREENS.items()}
    where: dict[int, str] = {}
    router = Router(name="floor")

    @router.message(CommandStart())
    async def on_start(message: Message) -> None:
        if message.from_user is not None:
            where[message.from_user.id] = ROOT
        text, markup = menu[ROOT]
        await message.answer(text, reply_markup=markup)

    @router.callback_query()
    async def on_tap(callback: CallbackQuery) -> None:
        user_id = callback.from_user.id
        target = target_of(where.get(user_id, ROOT), callback.data or "")
        if target is None or not isinstance(callback.message, Message):
            await callback.answer()
            return
        where[user_id] = target
        text, markup = menu[target]
        await callback.answer()
        await callback.message.edit_text(text, reply_markup=markup)

    return router


def build_app(token: str, api_base: str | None, secret: str, webhook_url: str) -> web.Application:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
    bot = Bot(token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    dispatcher = Dispatcher(storage=MemoryStorage(), events_isolation=SimpleEventIsolation())
    dispatcher.update.outer_middleware(LogUpdates())
    dispatcher.include_router(menu_router())

    async def on_startup(bot: Bot) -> None:
        await bot.set_webhook(
            webhook_url,
            secret_token=secret,
            allowed_updates=dispatcher.resolve_used_update_types(),
            drop_pending_updates=False,
        )
        log.info("webhook registered")

    dispatcher.startup.register(on_startup)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    SimpleRequestHandler(dispatcher, bot, handle_in_background=False, secret_token=secret).register(
        app, path=WEBHOOK_PATH
    )
    setup_application(app, dispatcher, bot=bot)
    return app


def main() -> int:
    env = os.environ
    configure_logging(env.get("LOG_LEVEL", "INFO").upper())
    host, port = env.get("HOST", "127.0.0.1"), int(env.get("PORT", "8080"))
    webhook_url = env.get("WEBHOOK_URL") or f"http://{host}:{port}{WEBHOOK_PATH}"
    app = build_app(
        env["BOT_TOKEN"], env.get("TELEGRAM_API_BASE"), env["WEBHOOK_SECRET"], webhook_url
    )
    # run_app answers SIGTERM and SIGINT with a graceful shutdown.
    web.run_app(app, host=host, port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
