"""Links through which KIE fetches the pictures users sent, without seeing our bot token.

Telegram's own file URLs embed the bot token, so they must never leave us.
Instead KIE gets `/media/{file_id}/{signature}` on our server; the signature
(HMAC of the file id with a server secret) makes the link unguessable, and the
handler fetches the file from Telegram and passes it on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import mimetypes

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiohttp import web

log = logging.getLogger(__name__)

MEDIA_PATH = "/media/{file_id}/{signature}"
MAX_MEDIA_BYTES = 20 * 1024 * 1024  # what getFile lets a bot download


class MediaLinks:
    def __init__(self, public_base_url: str, secret: str) -> None:
        self.base = public_base_url.rstrip("/")
        self._key = hashlib.sha256(secret.encode()).digest()

    def sign(self, file_id: str) -> str:
        return hmac.new(self._key, file_id.encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, file_id: str) -> str:
        return f"{self.base}/media/{file_id}/{self.sign(file_id)}"

    def valid(self, file_id: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(file_id), signature)


def add_media_route(app: web.Application, links: MediaLinks, bot: Bot) -> None:
    async def handle(request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if not links.valid(file_id, request.match_info["signature"]):
            raise web.HTTPNotFound()
        try:
            file = await bot.get_file(file_id)
            if file.file_path is None or (file.file_size or 0) > MAX_MEDIA_BYTES:
                raise web.HTTPNotFound()
            data = await bot.download_file(file.file_path)
        except TelegramAPIError as exc:
            log.info("media %s not available: %s", file_id, exc)
            raise web.HTTPNotFound() from exc
        assert data is not None
        content_type = mimetypes.guess_type(file.file_path)[0] or "application/octet-stream"
        return web.Response(body=data.read(), content_type=content_type)

    app.router.add_get(MEDIA_PATH, handle)
