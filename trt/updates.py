"""From one Telegram update to the answer the transport gives Telegram.

Webhook and long polling both hand updates here, and both acknowledge an update
(a 2xx, or an offset past it) only when this says so:

- an update id handled before is acknowledged with no second effect;
- an update refused for an outage (the database is down) is not acknowledged,
  so Telegram delivers it again once the outage is over;
- otherwise it goes through the dispatcher (whose error paths apologise to the
  user), then its id is recorded, then it is acknowledged.

A second delivery of an update still being handled waits for the first and gets
its answer, so one process never runs one update twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from engine.telegram import UpdateNotProcessed, conversation_of
from storage.processed_updates import ProcessedUpdates
from trt.observability.context import scope
from trt.observability.metrics import ERRORS, UPDATES
from trt.telegram_errors import telegram_unreachable

log = logging.getLogger("trt.updates")


class UpdateProcessor:
    def __init__(
        self,
        dispatcher: Dispatcher,
        bot: Bot,
        processed: ProcessedUpdates,
        retry_later: Callable[[BaseException], bool],
    ) -> None:
        self.dispatcher = dispatcher
        self.bot = bot
        self.processed = processed
        self.retry_later = retry_later
        self.draining = False
        self._in_flight: dict[int, asyncio.Future[bool]] = {}

    async def process(self, update: Update) -> bool:
        """True when the update may be acknowledged; raises only on a bug of our own."""
        running = self._in_flight.get(update.update_id)
        if running is not None:
            return await asyncio.shield(running)
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[update.update_id] = outcome
        try:
            with scope(update_id=update.update_id):
                done = await self._process(update)
            outcome.set_result(done)
            return done
        finally:
            if not outcome.done():
                outcome.set_result(False)
            del self._in_flight[update.update_id]

    async def _process(self, update: Update) -> bool:
        try:
            tap = update.callback_query is not None
            if await self.processed.seen(update.update_id, conversation_of(update), tap):
                UPDATES.labels(update.event_type, "duplicate").inc()
                log.info("update already handled; acknowledged again")
                return True
        except Exception as exc:
            if self.retry_later(exc):
                return self._refused(exc)
            raise
        try:
            await self.dispatcher.feed_update(self.bot, update)
        except Exception as exc:
            if self.retry_later(exc):
                return self._refused(exc)
            # Escaped every error path (an update type without one): it would fail
            # the same way on every delivery, so it is recorded and acknowledged.
            ERRORS.labels("update_unhandled").inc()
            log.exception("update failed outside every error handler")
        self.processed.record(update.update_id)
        return True

    @staticmethod
    def _refused(exc: BaseException) -> bool:
        cause = exc.__cause__ if isinstance(exc, UpdateNotProcessed) and exc.__cause__ else exc
        kind = "telegram_unavailable" if telegram_unreachable(cause) else "database_unavailable"
        ERRORS.labels(kind).inc()
        log.warning(
            "update not processed (%s: %s); Telegram will deliver it again",
            kind.replace("_", " "),
            type(cause).__name__,
        )
        return False
