"""The service's parts attached to a built product: what `trt.product` calls.

Kept apart from the product's own wiring so that product.py stays a list of
what the product is made of, and this file a list of what watches over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.types import Message, TelegramObject
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.runtime import FlowEngine
from engine.store import MemoryStore
from engine.telegram import UpdateNotProcessed
from pricing.catalog import Catalog, CatalogError
from pricing.source import CatalogSource
from storage.conversation_store import SqlStateStore
from storage.errors import is_unavailable
from storage.processed_updates import ProcessedUpdates
from storage.users import set_active
from trt.flood import FloodControl, FloodLimits
from trt.health import Readiness, add_health_routes
from trt.observability.endpoint import add_metrics_route
from trt.observability.http import observe_requests
from trt.observability.logs import install_error_counter
from trt.observability.store import CorrelatedStore
from trt.observability.updates import Handler, UpdateObserver
from trt.telegram_errors import TelegramErrors, telegram_unreachable
from trt.updates import UpdateProcessor
from trt.webhook import add_telegram_webhook


def prices_loaded(prices: Catalog | CatalogSource | None) -> Callable[[], bool]:
    """For readiness: whether the product has a catalog with models to sell right now."""

    def check() -> bool:
        if prices is None:
            return False
        try:
            current = prices if isinstance(prices, Catalog) else prices.current()
        except CatalogError:
            return False
        return bool(current.models)

    return check


def retry_later(exc: BaseException) -> bool:
    """Errors after which an update is refused, so that Telegram delivers it again: the
    database or the Bot API out of reach. Safe because every effect of an update is keyed
    by its cause: the redelivery replays what was done and finishes what was not."""
    return isinstance(exc, UpdateNotProcessed) or is_unavailable(exc) or telegram_unreachable(exc)


def before_isolation(dispatcher: Dispatcher, middleware: BaseMiddleware) -> None:
    """Adds an update middleware ahead of aiogram's per-chat lock (its FSM middleware),
    which the Dispatcher registers first; what runs before it never waits for a chat."""
    manager = dispatcher.update.outer_middleware
    lock = dispatcher.fsm if dispatcher.fsm in manager else None
    if lock is not None:
        manager.unregister(lock)
    manager.register(middleware)
    if lock is not None:
        manager.register(lock)


class Reactivate(BaseMiddleware):
    """/start from a user marked inactive (they had blocked the bot) means they are back."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if (
            isinstance(event, Message)
            and event.from_user is not None
            and (event.text or "").startswith("/start")
        ):
            await set_active(self.db, event.from_user.id, True)
        return await handler(event, data)


def instrument(
    bot: Bot,
    dispatcher: Dispatcher,
    engine: FlowEngine,
    db: AsyncEngine,
    flood: FloodLimits | None = None,
    admin_ids: frozenset[int] = frozenset(),
    flood_clock: Callable[[], float] = time.monotonic,
) -> None:
    """Telegram errors by kind on the bot's session; ids, metrics and flood control on
    the dispatcher (which never sheds payments or the commands of `admin_ids`); flood
    control's buckets fill by `flood_clock` (seconds; a test's own clock)."""
    install_error_counter()

    async def blocked(user_id: int) -> None:
        await set_active(db, user_id, False)

    bot.session.middleware(TelegramErrors(blocked))
    before_isolation(dispatcher, UpdateObserver(retry_later))
    if flood is not None:
        before_isolation(dispatcher, FloodControl(engine, flood, flood_clock, admin_ids))
    dispatcher.message.outer_middleware(Reactivate(db))


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    processor: UpdateProcessor
    readiness: Readiness

    def drain(self) -> None:
        """Shutting down: /readyz turns 503 and new updates are refused (redelivered)."""
        self.processor.draining = True
        self.readiness.draining = True


def add_service_routes(
    app: web.Application,
    *,
    dispatcher: Dispatcher,
    bot: Bot,
    db: AsyncEngine,
    engine: FlowEngine,
    prices_loaded: Callable[[], bool],
    webhook_secret: str,
    metrics_token: str | None = None,
) -> ServiceRoutes:
    app.middlewares.append(observe_requests)
    store = engine.store.inner if isinstance(engine.store, CorrelatedStore) else engine.store
    # The update's dedup read also reads its conversation when both live in `db`.
    states = store if isinstance(store, SqlStateStore) and store.db is db else None
    # A tap of a conversation held in memory needs no lookup (storage.processed_updates).
    holds = store.holds if isinstance(store, SqlStateStore | MemoryStore) else None
    processed = ProcessedUpdates(db, states, holds=holds)
    processor = UpdateProcessor(dispatcher, bot, processed, retry_later)

    async def record_the_rest(_app: web.Application) -> None:
        # After the listener stopped and its requests finished: every update is handled.
        await processed.close()

    app.on_cleanup.append(record_the_rest)
    add_telegram_webhook(app, processor, webhook_secret)
    readiness = Readiness(db, lambda: bool(engine.spec.states), prices_loaded)
    add_health_routes(app, readiness)
    add_metrics_route(app, db, metrics_token)
    return ServiceRoutes(processor, readiness)
