"""Telegram's refusals handled by kind, once, for every Bot API call the process makes.

An aiogram request middleware on the bot's session, so handlers, job delivery
and flood notices all get the same treatment without knowing of it:

- 429 Too Many Requests: wait `retry_after` and send again (a few times, and
  only for short waits: a long one would hold the update for minutes);
- 403 Forbidden to a private chat: the user blocked the bot, so they are marked
  inactive (the error still reaches the caller, who stops there);
- "message is not modified" on an edit: the screen already shows it; ignored;
- everything else is counted by kind and raised (the engine's error path and
  its fallback to a new message when an edit fails deal with it).

It also times every call and tells the update in flight that its callback
query was answered, which is what `trt_callbacks_unanswered` watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import AnswerCallbackQuery, TelegramMethod

from trt.observability.context import current_report
from trt.observability.metrics import CALLBACK_ANSWER_SECONDS, ERRORS, TELEGRAM_SECONDS


def telegram_unreachable(exc: BaseException) -> bool:
    """The Bot API did not answer (network), failed on its side (5xx) or asked for a
    longer pause than this middleware waits (429): what the update was to show or send
    did not happen, and a later delivery may manage it."""
    return isinstance(exc, TelegramNetworkError | TelegramServerError | TelegramRetryAfter)


log = logging.getLogger("trt.telegram")

OnBlocked = Callable[[int], Awaitable[None]]


def error_kind(exc: TelegramAPIError) -> str:
    if isinstance(exc, TelegramRetryAfter):
        return "telegram_retry_after"
    if isinstance(exc, TelegramForbiddenError):
        return "telegram_forbidden"
    if isinstance(exc, TelegramBadRequest):
        if "message is not modified" in exc.message:
            return "telegram_not_modified"
        if "can't be edited" in exc.message:
            return "telegram_cant_edit"
        return "telegram_bad_request"
    if isinstance(exc, TelegramServerError):
        return "telegram_server"
    if isinstance(exc, TelegramNetworkError):
        return "telegram_network"
    return "telegram_other"


class TelegramErrors(BaseRequestMiddleware):
    def __init__(
        self,
        on_blocked: OnBlocked | None = None,
        *,
        attempts: int = 3,
        max_wait_s: float = 30.0,
    ) -> None:
        self.on_blocked = on_blocked
        self.attempts = attempts
        self.max_wait_s = max_wait_s

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[Any],
        bot: Bot,
        method: TelegramMethod[Any],
    ) -> Any:
        name = method.__api_method__
        started = time.perf_counter()
        if isinstance(method, AnswerCallbackQuery):
            self._answering(method)
        try:
            return await self._send(make_request, bot, method)
        finally:
            TELEGRAM_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def _send(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return await make_request(bot, method)
            except TelegramAPIError as exc:
                kind = error_kind(exc)
                ERRORS.labels(kind).inc()
                if kind == "telegram_not_modified" and method.__api_method__.startswith("edit"):
                    return True  # what Telegram answers to an edit it performed
                if isinstance(exc, TelegramRetryAfter) and self._may_wait(exc, attempt):
                    log.warning(
                        "%s: Telegram asks to wait %s s (attempt %d)",
                        method.__api_method__,
                        exc.retry_after,
                        attempt,
                    )
                    await asyncio.sleep(exc.retry_after)
                    continue
                if isinstance(exc, TelegramForbiddenError):
                    await self._blocked(method)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _may_wait(self, exc: TelegramRetryAfter, attempt: int) -> bool:
        return attempt < self.attempts and exc.retry_after <= self.max_wait_s

    async def _blocked(self, method: TelegramMethod[Any]) -> None:
        chat_id = getattr(method, "chat_id", None)
        if self.on_blocked is None or not isinstance(chat_id, int) or chat_id <= 0:
            return  # only a private chat's id is a user's
        log.info("user %s blocked the bot; marking them inactive", chat_id)
        try:
            await self.on_blocked(chat_id)
        except Exception:
            log.warning("could not mark user %s inactive", chat_id, exc_info=True)

    @staticmethod
    def _answering(method: AnswerCallbackQuery) -> None:
        report = current_report()
        if report is None or report.callback_query_id != method.callback_query_id:
            return
        if not report.answered:
            report.answered = True
            CALLBACK_ANSWER_SECONDS.observe(time.perf_counter() - report.started)
