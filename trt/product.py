"""The whole product wired once: engine, registry, money, jobs, KIE, and its HTTP routes.

`trt run`, `trt serve` and the tests' stack all build it here, so what tests
exercise is what runs: observability, Telegram error handling and the webhook's
deduplication included (`trt.wiring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiogram import Bot, Dispatcher
from aiogram.types import User
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.checker import load_checked
from engine.outbox import Outbox
from engine.runtime import FlowEngine
from engine.store import MemoryStore, StateStore
from flows.admin import admin_router
from flows.admin_service import AdminService
from flows.generation.callbacks import add_kie_callbacks
from flows.generation.media_links import MediaLinks, add_media_route
from flows.generation.notices import JobNotices
from flows.generation.service import GenerationService
from flows.generation.settings import GenerationSettings
from flows.payments.growth import FirstContact
from flows.payments.router import payments_router
from flows.payments.service import PaymentsService
from flows.payments.settings import PaymentSettings
from flows.registry import build_registry
from flows.services import Services
from kie.client import KieClient
from pricing.catalog import Catalog
from pricing.source import CatalogSource
from pricing.topups import load_packages
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.jobs import JobStore
from storage.ledger import Ledger
from storage.payments import PaymentStore
from storage.settings import DatabaseSettings
from trt.app import build_dispatcher
from trt.flood import FloodLimits
from trt.observability.jobs import CorrelatedJobs, JobScopes, TimedKie
from trt.observability.store import CorrelatedStore
from trt.settings import Settings
from trt.wiring import ServiceRoutes, add_service_routes, instrument, prices_loaded, retry_later


@dataclass(slots=True)
class Product:
    bot: Bot
    dispatcher: Dispatcher
    engine: FlowEngine
    services: Services
    generation: GenerationService
    payments: PaymentsService
    kie: KieClient
    links: MediaLinks | None
    prices: Catalog | CatalogSource | None = None


def build_product(
    *,
    bot: Bot,
    store: StateStore,
    db: AsyncEngine,
    flows_path: Path,
    settings: GenerationSettings,
    kie: KieClient,
    media_secret: str,
    catalog: Catalog | CatalogSource | None = None,
    payment_settings: PaymentSettings | None = None,
    flood: FloodLimits | None = None,
    flood_clock: Callable[[], float] = time.monotonic,
) -> Product:
    """The object graph, once, top-down: each part is built from parts built before it.
    The services show screens through the Outbox, which the engine, built last from the
    registry that holds the services' actions, serves."""
    outbox = Outbox()
    pay = payment_settings or PaymentSettings()
    ledger = Ledger(db)
    # One clock for the job rows, the service's deadlines and the elapsed time it shows.
    job_store = JobStore(db)
    clock = job_store.clock
    jobs = CorrelatedJobs(job_store)
    payment_store = PaymentStore(db)

    payments = PaymentsService(
        store=payment_store,
        ledger=ledger,
        bot=bot,
        notifier=outbox,
        settings=pay,
        packages=load_packages(with_rub=pay.payment_provider_token is not None),
    )
    generation = GenerationService(
        jobs=jobs,
        ledger=ledger,
        kie=TimedKie(kie),
        bot=bot,
        notices=JobNotices(bot=bot, notifier=outbox, jobs=jobs, clock=clock),
        settings=settings,
        hooks=JobScopes(),
        clock=clock,
    )
    admin = AdminService(db=db, ledger=ledger, jobs=jobs, store=payment_store, payments=payments)
    services = Services(db, ledger, jobs, generation, payments, admin)
    links = MediaLinks(settings.public_base_url, media_secret) if settings.public_base_url else None
    prices = catalog if catalog is not None else CatalogSource()
    registry = build_registry(prices, services, links.url if links else None)
    engine = FlowEngine(
        load_checked(flows_path, registry), registry, CorrelatedStore(store), outbox=outbox
    )

    def locale_of(code: str | None) -> str:
        return engine.locale_of(User(id=0, is_bot=False, first_name="-", language_code=code))

    dispatcher = build_dispatcher(
        engine,
        [
            admin_router(admin, engine.text, pay.admin_ids),
            payments_router(payments, locale_of, pay.pre_checkout_budget_s),
        ],
        retry_later=retry_later,
    )
    dispatcher.message.outer_middleware(FirstContact(ledger, pay.welcome_bonus))
    instrument(bot, dispatcher, engine, db, flood, pay.admin_ids, flood_clock)
    return Product(
        bot, dispatcher, engine, services, generation, payments, kie, links, prices=prices
    )


def product_routes(
    app: web.Application,
    product: Product,
    webhook_secret: str,
    *,
    metrics_token: str | None = None,
) -> ServiceRoutes:
    """The webhook, KIE callbacks, media links, /healthz, /readyz and /metrics."""
    routes = add_service_routes(
        app,
        dispatcher=product.dispatcher,
        bot=product.bot,
        db=product.services.db,
        engine=product.engine,
        prices_loaded=prices_loaded(product.prices),
        webhook_secret=webhook_secret,
        metrics_token=metrics_token,
    )
    add_kie_callbacks(app, product.generation)
    if product.links is not None:
        add_media_route(app, product.links, product.bot)
    return routes


def media_secret(webhook_secret: str) -> str:
    """Stable across restarts and replicas (a link made by one must open on another),
    and not the webhook secret itself."""
    return hashlib.sha256(b"trt media links:" + webhook_secret.encode()).hexdigest()


async def open_product(
    exits: contextlib.AsyncExitStack,
    *,
    settings: Settings,
    generation: GenerationSettings,
    database: DatabaseSettings,
    bot: Bot,
    flood: FloodLimits | None = None,
) -> Product:
    """The product on its own database engine, store and KIE client, all closed by `exits`
    (the bot's session too): what `trt run` and `trt serve` both start from."""
    exits.push_async_callback(bot.session.close)
    db = create_engine(database)
    exits.push_async_callback(db.dispose)
    store: StateStore = MemoryStore() if settings.state_store == "memory" else SqlStateStore(db)
    assert generation.kie_api_key is not None
    kie = KieClient(generation.kie_base_url, generation.kie_api_key)
    exits.push_async_callback(kie.close)
    return build_product(
        bot=bot,
        store=store,
        db=db,
        flows_path=settings.flows_path,
        settings=generation,
        kie=kie,
        media_secret=media_secret(settings.webhook_secret),
        flood=flood,
    )


@asynccontextmanager
async def background(product: Product) -> AsyncIterator[None]:
    """Recovery at start-up, then the poller and sweeper until the block ends; in-flight
    job steps are finished before it returns (graceful shutdown)."""
    stop = asyncio.Event()
    await product.generation.check_due()
    task = asyncio.create_task(product.generation.run(stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await product.generation.drain()
