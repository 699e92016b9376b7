"""The whole product wired once: engine, registry, money, jobs, KIE, and its HTTP routes.

`trt run`, the tests' stack and (later) `trt serve` all build it here, so what
tests exercise is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiogram import Bot, Dispatcher
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.loader import load_flow
from engine.runtime import FlowEngine
from engine.store import StateStore
from engine.webhook import add_webhook
from flows.generation.callbacks import add_kie_callbacks
from flows.generation.media_links import MediaLinks, add_media_route
from flows.generation.service import GenerationService
from flows.generation.settings import GenerationSettings
from flows.registry import build_registry
from flows.services import Services
from kie.client import KieClient
from pricing.catalog import Catalog
from trt.app import build_dispatcher


@dataclass(slots=True)
class Product:
    bot: Bot
    dispatcher: Dispatcher
    engine: FlowEngine
    services: Services
    generation: GenerationService
    kie: KieClient
    links: MediaLinks | None


def build_product(
    *,
    bot: Bot,
    store: StateStore,
    db: AsyncEngine,
    flows_path: Path,
    settings: GenerationSettings,
    kie: KieClient,
    media_secret: str,
    catalog: Catalog | None = None,
) -> Product:
    services = Services.on(db)
    base = settings.public_base_url
    links = MediaLinks(base, media_secret) if base else None
    registry = build_registry(catalog, services, links.url if links else None)
    engine = FlowEngine(load_flow(flows_path), registry, store)
    generation = GenerationService(
        jobs=services.jobs,
        ledger=services.ledger,
        kie=kie,
        bot=bot,
        screens=engine,
        text=engine.renderer.product_text,
        settings=settings,
    )
    services.attach_generation(generation)
    return Product(bot, build_dispatcher(engine), engine, services, generation, kie, links)


def product_routes(app: web.Application, product: Product, webhook_secret: str) -> None:
    add_webhook(app, product.dispatcher, product.bot, webhook_secret)
    add_kie_callbacks(app, product.generation)
    if product.links is not None:
        add_media_route(app, product.links, product.bot)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)


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
