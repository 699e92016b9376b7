"""Per-user flood control: a burst of taps gets one "one moment" notice, nothing piles up.

A token bucket per user bounds the rate (`burst` updates at once, `rate` per
second after that), and a cap on each user's updates in flight bounds how many
can wait behind aiogram's per-chat lock. It runs ahead of that lock, so a
dropped update never waits for it. Every dropped callback query is still
answered (the first of a burst with the notice), because Telegram shows a
spinner until a query is answered. The buckets themselves are bounded too.

Only navigation is ever shed. An update that carries an effect someone paid for
or asked for with authority (`pre_checkout_query`, a `successful_payment` or
`refunded_payment` message, an admin's command) passes untouched and costs no
tokens: dropping it would take a user's Stars without crediting them, or lose an
admin's /credit without an audit row, and a redelivery would find it handled.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.dispatcher.middlewares.user_context import EVENT_FROM_USER_KEY
from aiogram.exceptions import TelegramAPIError
from aiogram.types import TelegramObject, Update, User

from engine.runtime import FlowEngine
from trt.observability.context import current_report

log = logging.getLogger("trt.flood")

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class FloodLimits:
    rate: float = 3.0  # updates per second a user may keep up
    burst: int = 10  # updates a user may send at once
    in_flight: int = 5  # a user's updates being handled or waiting at once
    users: int = 100_000  # buckets kept; the least recently seen are forgotten


class _Bucket:
    __slots__ = ("in_flight", "notified", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.in_flight = 0
        self.notified = False


def carries_effect(update: Update, admin_ids: frozenset[int]) -> bool:
    """Updates flood control must never drop: payments and admin commands."""
    if update.pre_checkout_query is not None:
        return True
    message = update.message
    if message is None:
        return False
    if message.successful_payment is not None or message.refunded_payment is not None:
        return True
    sender = message.from_user
    return sender is not None and sender.id in admin_ids and (message.text or "").startswith("/")


class FloodControl(BaseMiddleware):
    def __init__(
        self,
        engine: FlowEngine,
        limits: FloodLimits,
        clock: Callable[[], float] = time.monotonic,
        admin_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.clock = clock
        self.admin_ids = admin_ids
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get(EVENT_FROM_USER_KEY)
        if user is None or not isinstance(event, Update) or carries_effect(event, self.admin_ids):
            return await handler(event, data)
        bucket = self._bucket(user.id)
        if bucket.tokens >= 1 and bucket.in_flight < self.limits.in_flight:
            bucket.tokens -= 1
            bucket.notified = False
            bucket.in_flight += 1
            try:
                return await handler(event, data)
            finally:
                bucket.in_flight -= 1
        first = not bucket.notified
        bucket.notified = True
        if (report := current_report()) is not None:
            report.outcome = "flooded"
        log.info("update dropped by flood control", extra={"notified": first})
        await self._notice(event, data["bot"], user, first)
        return None

    def _bucket(self, user_id: int) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[user_id] = _Bucket(float(self.limits.burst), now)
            while len(self._buckets) > self.limits.users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
            refill = (now - bucket.stamp) * self.limits.rate
            bucket.tokens = min(float(self.limits.burst), bucket.tokens + refill)
            bucket.stamp = now
        return bucket

    def _forget_idle(self, now: float) -> None:
        """Drops the least recently seen buckets that hold nothing: full again, with no
        update in flight, so a new one would be the same. What is kept is the users of
        the last `burst / rate` seconds, not every user since the start (the soak in
        bench/soak.py saw the buckets grow with every new user up to `users`)."""
        limits = self.limits
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            refilled = oldest.tokens + (now - oldest.stamp) * limits.rate
            if oldest.in_flight or refilled < limits.burst:
                return
            self._buckets.popitem(last=False)

    async def _notice(self, update: Update, bot: Bot, user: User, first: bool) -> None:
        text = self.engine.renderer.system("busy", self.engine.locale_of(user)) if first else None
        try:
            if update.callback_query is not None:
                await bot.answer_callback_query(update.callback_query.id, text=text)
            elif update.message is not None and text is not None:
                await bot.send_message(update.message.chat.id, text)
        except TelegramAPIError as exc:
            log.warning("flood notice not delivered: %s", exc)
