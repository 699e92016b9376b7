"""The aiohttp endpoint Telegram posts updates to.

Updates are handled before the HTTP answer (`handle_in_background=False`):
a crash or an error answers non-2xx and Telegram delivers the update again,
instead of the update being acknowledged and lost.

This is the engine's own, storage-free endpoint. The product serves
`trt.webhook` at the same path instead, which also skips redelivered updates
by id and refuses updates during a database outage.
"""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

WEBHOOK_PATH = "/telegram/webhook"


def add_webhook(
    app: web.Application,
    dispatcher: Dispatcher,
    bot: Bot,
    secret: str,
    path: str = WEBHOOK_PATH,
) -> None:
    handler = SimpleRequestHandler(dispatcher, bot, secret_token=secret, handle_in_background=False)
    handler.register(app, path)
