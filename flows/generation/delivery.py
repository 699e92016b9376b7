"""Sending a result to the user as the right kind of message, whatever Telegram refuses.

By URL first (Telegram fetches it, nothing passes through us); when Telegram
cannot fetch or use the URL, we download the file and upload it; when that
fails too, or the download is refused, the user still gets a link. Never silence.

The download goes through a ResultFetcher (flows.generation.safe_fetch): the URL
comes from KIE, so only public addresses are fetched, unless allow-listed.
"""

from __future__ import annotations

import logging
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramNetworkError
from aiogram.types import BufferedInputFile

from flows.generation.fetch_policy import FetchError, FetchRefused
from flows.generation.safe_fetch import ResultFetcher

log = logging.getLogger(__name__)


def media_kind(kind: str) -> str:
    """What a kind of work produces: "video", "audio", "photo" or, unknown, "document"."""
    if "video" in kind:
        return "video"
    if any(word in kind for word in ("audio", "music", "speech")):
        return "audio"
    if "image" in kind or "edit" in kind:
        return "photo"
    return "document"


async def _send(bot: Bot, kind: str, chat_id: int, media: Any, caption: str) -> None:
    match media_kind(kind):
        case "photo":
            await bot.send_photo(chat_id, media, caption=caption)
        case "video":
            await bot.send_video(chat_id, media, caption=caption)
        case "audio":
            await bot.send_audio(chat_id, media, caption=caption)
        case _:
            await bot.send_document(chat_id, media, caption=caption)


async def _download(fetcher: ResultFetcher, url: str) -> bytes | None:
    """The file's bytes, or None (logged in one line, no traceback): a link goes instead."""
    try:
        return await fetcher.fetch(url)
    except FetchRefused as exc:
        log.warning("download of a result refused: %s; sending a link", exc)
    except FetchError as exc:
        log.warning("download of a result failed: %s; sending a link", exc)
    return None


async def deliver_result(
    bot: Bot,
    chat_id: int,
    kind: str,
    urls: list[str],
    caption: str,
    link_text: str,
    *,
    fetcher: ResultFetcher | None = None,
) -> str:
    """Sends every result file; returns how the last one went: "url", "upload" or "link".

    `fetcher` downloads what Telegram refuses by URL; none: production's, which fetches
    from the public internet only.
    """
    fetcher = fetcher or ResultFetcher()
    how = "url"
    for url in urls:
        try:
            await _send(bot, kind, chat_id, url, caption)
            how = "url"
            continue
        except (TelegramBadRequest, TelegramNetworkError) as exc:
            log.info("Telegram refused the result by URL (%s), uploading it", exc)
        body = await _download(fetcher, url)
        if body is not None:
            name = url.rsplit("/", 1)[-1].split("?", 1)[0] or "result"
            try:
                await _send(bot, kind, chat_id, BufferedInputFile(body, name), caption)
                how = "upload"
                continue
            except (TelegramBadRequest, TelegramNetworkError) as exc:
                log.info("Telegram refused the uploaded result (%s), sending a link", exc)
        await bot.send_message(chat_id, link_text.format(url=url))
        how = "link"
    return how
