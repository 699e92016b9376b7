"""One aiogram middleware around every update: its correlation ids, metrics and log line.

It sits at the update level ahead of flood control and of aiogram's per-chat
lock, so the time a tap waits for the chat's previous update counts in the
handling latency, and a dropped tap is still counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.dispatcher.middlewares.user_context import EVENT_CHAT_KEY, EVENT_FROM_USER_KEY
from aiogram.types import Chat, TelegramObject, Update, User

from trt.observability.context import UpdateReport, scope
from trt.observability.metrics import CALLBACKS_UNANSWERED, UPDATE_SECONDS, UPDATES

log = logging.getLogger("trt.updates")

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UpdateObserver(BaseMiddleware):
    """`retry_later` tells an outage (the update is refused and redelivered) from a bug."""

    def __init__(self, retry_later: Callable[[BaseException], bool]) -> None:
        self.retry_later = retry_later

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        kind = event.event_type
        user: User | None = data.get(EVENT_FROM_USER_KEY)
        chat: Chat | None = data.get(EVENT_CHAT_KEY)
        report = UpdateReport(kind)
        if event.callback_query is not None:
            report.callback_query_id = event.callback_query.id
        outcome = "unhandled"
        with scope(
            report,
            update_id=event.update_id,
            user_id=user.id if user else None,
            chat_id=chat.id if chat else None,
        ):
            try:
                result = await handler(event, data)
            except Exception as exc:
                outcome = "unavailable" if self.retry_later(exc) else "unhandled"
                raise
            else:
                outcome = report.outcome or (
                    "error" if report.errors else "ignored" if result is UNHANDLED else "ok"
                )
                return result
            finally:
                self._finish(report, outcome)

    @staticmethod
    def _finish(report: UpdateReport, outcome: str) -> None:
        seconds = time.perf_counter() - report.started
        UPDATES.labels(report.kind, outcome).inc()
        UPDATE_SECONDS.labels(report.kind).observe(seconds)
        if report.callback_query_id is not None and not report.answered:
            CALLBACKS_UNANSWERED.inc()
            log.error("callback query %s was left unanswered", report.callback_query_id)
        log.info(
            "update %s",
            outcome,
            extra={"update_type": report.kind, "outcome": outcome, "ms": round(seconds * 1000, 1)},
        )
