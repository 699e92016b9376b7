"""`POST /telegram/webhook`: Telegram's updates, checked, deduplicated, never lost.

The secret token header is compared in constant time before the body is even
read: a forged request gets 401 and nothing is parsed or stored. The answer
is 2xx only when `UpdateProcessor` says the update was handled (or was handled
before); otherwise 503, and Telegram delivers the update again later.

A body that is not an update (too large, nested too deep, an id beyond 64 bits, not a
JSON object, not UTF-8) gets a 4xx and one log line, never a traceback: only Telegram
knows the secret, yet whoever has it must not be able to flood the log.
"""

from __future__ import annotations

import hmac
import logging

from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from engine.json_body import BodyRefused, read_json_object
from trt.updates import UpdateProcessor

WEBHOOK_PATH = "/telegram/webhook"  # where Telegram posts updates (setWebhook)

log = logging.getLogger("trt.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024


def _where(exc: ValueError) -> str:
    """Which fields are wrong, never their values: those are a user's messages."""
    if not isinstance(exc, ValidationError):
        return type(exc).__name__
    return ", ".join(sorted({".".join(map(str, e["loc"])) or "body" for e in exc.errors()})[:5])


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
        try:
            body = await read_json_object(request, MAX_UPDATE_BYTES)
            update = Update.model_validate(body, context={"bot": processor.bot})
        except BodyRefused as exc:
            log.info("webhook request refused: %s", exc.reason)
            error = "too large" if exc.status == 413 else "not an update"
            return web.json_response({"ok": False, "error": error}, status=exc.status)
        except ValueError as exc:  # pydantic's ValidationError among them
            log.info("webhook request refused: not an update (%s)", _where(exc))
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
