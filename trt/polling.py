"""Long polling with the webhook's guarantee: an update is confirmed only once handled.

aiogram's own polling confirms each batch as soon as it is fetched, so an update
that failed (the database was down) would be gone. Here a batch is handled
first, and the offset moves only past the updates the processor accepted, up
to the first it refused; the ones after it come again with the next fetch and
are recognised as handled. A batch is finished before the next is fetched,
which bounds the work in flight; stopping waits for the batch, never for a fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Update

from trt.updates import UpdateProcessor

log = logging.getLogger("trt.polling")


async def _accepted(processor: UpdateProcessor, update: Update) -> bool:
    try:
        return await processor.process(update)
    except Exception:
        log.exception("update %s could not be processed", update.update_id)
        return False


def next_offset(
    updates: Sequence[Update], accepted: Sequence[bool], offset: int | None
) -> int | None:
    """Past every update up to the first one not accepted."""
    for update, ok in zip(updates, accepted, strict=True):
        if not ok:
            break
        offset = update.update_id + 1
    return offset


async def poll(
    bot: Bot,
    processor: UpdateProcessor,
    allowed_updates: list[str],
    stop: asyncio.Event,
    *,
    timeout_s: int = 25,
    backoff_s: float = 1.0,
) -> None:
    offset: int | None = None
    while not stop.is_set():
        fetch = asyncio.ensure_future(
            bot.get_updates(
                offset=offset,
                timeout=timeout_s,
                allowed_updates=allowed_updates,
                request_timeout=timeout_s + 10,
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TelegramAPIError):
                await fetch
            break
        try:
            updates = fetch.result()
        except TelegramAPIError as exc:
            log.warning("getUpdates failed: %s", exc)
            await _pause(stop, backoff_s)
            continue
        if not updates:
            continue
        accepted = await asyncio.gather(*(_accepted(processor, u) for u in updates))
        offset = next_offset(updates, accepted, offset)
        if not all(accepted):
            await _pause(stop, backoff_s)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
