"""`POST /telegram/webhook`: Telegram's updates, checked, deduplicated, never lost.

The secret token header is compared in constant time before the body is even
read: a forged request gets 401 and nothing is parsed or stored. The answer
is 2xx only when `UpdateProcessor` says the update was handled (or was handled
before); otherwise 503, and Telegram delivers the update again later.
"""

from __future__ import annotations

import hmac
import logging

from aiogram.types import Update
from aiohttp import web

from engine.webhook import WEBHOOK_PATH
from trt.updates import UpdateProcessor

log = logging.getLogger("trt.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024


def add_telegram_webhook(
    app: web.Application,
    processor: UpdateProcessor,
    secret: str,
    path: str = WEBHOOK_PATH,
) -> None:
    expected = secret.encode()

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            log.info("webhook request refused: wrong or missing secret token")
            return web.json_response({"ok": False}, status=401)
        if processor.draining:
            return web.json_response({"ok": False, "error": "shutting down"}, status=503)
        if (request.content_length or 0) > MAX_UPDATE_BYTES:
            return web.json_response({"ok": False, "error": "too large"}, status=413)
        try:
            update = Update.model_validate(await request.json(), context={"bot": processor.bot})
        except ValueError:
            return web.json_response({"ok": False, "error": "not an update"}, status=400)
        try:
            handled = await processor.process(update)
        except Exception:
            log.exception("update %s could not be processed", update.update_id)
            return web.json_response({"ok": False}, status=500)
        if not handled:
            return web.json_response({"ok": False, "error": "try again"}, status=503)
        return web.json_response({"ok": True})

    app.router.add_post(path, handle)
