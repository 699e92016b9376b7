"""`trt serve`: the bot in production, one aiohttp process serving everything.

Routes: POST /telegram/webhook, POST /kie/callback/..., the media links KIE
fetches pictures through, GET /healthz, /readyz and /metrics. With WEBHOOK_URL
set it registers the webhook (with the secret token and the update types the
dispatcher handles); without, it long-polls, with the same guarantee that an
update is confirmed only once handled.

Shutdown (SIGTERM or SIGINT) goes in the order that loses nothing: /readyz
turns 503 and new updates are refused (Telegram redelivers them to the next
process), polling stops after its batch, the listener closes and in-flight
requests finish (up to SHUTDOWN_TIMEOUT_S), the job poller stops and in-flight
job steps finish, and only then are the Bot API, KIE and database sessions
closed, since those steps still need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram.exceptions import TelegramAPIError
from aiohttp import web

from flows.generation.settings import GenerationSettings
from storage.migrate import migration_problem, upgrade_to_head
from storage.processed_updates import ProcessedUpdates
from storage.settings import DatabaseSettings
from trt import heap
from trt.app import build_bot
from trt.flood import FloodLimits
from trt.observability.logs import configure_logging
from trt.polling import poll
from trt.product import Product, background, open_product, product_routes
from trt.settings import Settings, read_all, secret_values
from trt.wiring import ServiceRoutes

log = logging.getLogger("trt.serve")

DEV_SECRET = "local-dev-secret"
MIN_SECRET_LENGTH = 16
PRUNE_EVERY_S = 3600.0


def problems(settings: Settings, generation: GenerationSettings) -> list[str]:
    """What `trt serve` refuses to start without; each line says how to fix it."""
    found = []
    if not settings.bot_token:
        found.append("BOT_TOKEN is not set (the token @BotFather gave; `trt run` works without)")
    if not generation.kie_api_key:
        found.append("KIE_API_KEY is not set (the key from kie.ai; `trt run` fakes KIE without)")
    if not generation.public_base_url:
        found.append(
            "PUBLIC_BASE_URL is not set (this service's public https URL: KIE sends "
            "callbacks to it and fetches the users' pictures from it)"
        )
    if settings.webhook_secret == DEV_SECRET or len(settings.webhook_secret) < MIN_SECRET_LENGTH:
        found.append(
            f"WEBHOOK_SECRET must be a random string of at least {MIN_SECRET_LENGTH} characters "
            "(A-Z, a-z, 0-9, _ and -): Telegram proves its requests with it, and it signs "
            "the media links KIE fetches"
        )
    return found


def flood_limits(settings: Settings) -> FloodLimits:
    return FloodLimits(
        rate=settings.flood_rate, burst=settings.flood_burst, in_flight=settings.flood_in_flight
    )


@contextlib.asynccontextmanager
async def _listening(
    product: Product, settings: Settings
) -> AsyncIterator[tuple[ServiceRoutes, web.AppRunner]]:
    app = web.Application()
    routes = product_routes(
        app, product, settings.webhook_secret, metrics_token=settings.metrics_token
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        yield routes, runner
    finally:
        # Closes the listener, lets in-flight requests finish, then stops.
        await runner.cleanup()


async def _prune(processed: ProcessedUpdates, keep: timedelta, stop: asyncio.Event) -> None:
    """Forgets old update ids now and then; Telegram redelivers for a day at most."""
    while not stop.is_set():
        try:
            removed = await processed.prune(datetime.now(UTC) - keep)
            log.debug("forgot %d old update ids", removed)
        except Exception as exc:
            log.warning("could not prune processed updates: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY_S)


async def _stopped(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await task


async def _start_updates(
    product: Product, settings: Settings, routes: ServiceRoutes, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """Registers the webhook, or starts polling; returns the polling task."""
    # The bot's own user, asked once before any update: aiogram keeps it, and screens
    # that show the bot's name would otherwise each ask while the first answer is due.
    await product.bot.me()
    allowed = product.dispatcher.resolve_used_update_types()
    if settings.webhook_url:
        await product.bot.set_webhook(
            settings.webhook_url,
            secret_token=settings.webhook_secret,
            allowed_updates=allowed,
            max_connections=settings.webhook_max_connections,
            drop_pending_updates=False,
        )
        log.info("webhook registered", extra={"allowed_updates": allowed})
        return None
    await product.bot.delete_webhook(drop_pending_updates=False)
    log.info("long polling", extra={"allowed_updates": allowed})
    return asyncio.create_task(poll(product.bot, routes.processor, allowed, stop))


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    migrate: bool = False,
) -> int:
    """Runs until `stop` is set (or SIGTERM/SIGINT when `stop` is None); 0 on a clean stop.
    `migrate`: bring the database to the latest migration first, in this process (the
    container's start: one interpreter pays the imports, not two)."""
    generation = GenerationSettings()
    database = DatabaseSettings()
    if found := problems(settings, generation):
        print("trt serve: cannot start:\n  " + "\n  ".join(found), file=sys.stderr)
        return 2
    if migrate:
        await asyncio.to_thread(upgrade_to_head, database.database_url)
    if reason := await migration_problem(database.database_url):
        print(f"trt serve: {reason}", file=sys.stderr)
        return 1
    assert settings.bot_token and generation.kie_api_key
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as exits:
        bot = build_bot(settings.bot_token, settings.telegram_api_base)
        product = await open_product(
            exits,
            settings=settings,
            generation=generation,
            database=database,
            bot=bot,
            flood=flood_limits(settings),
        )
        await exits.enter_async_context(background(product))
        routes, _ = await exits.enter_async_context(_listening(product, settings))
        chores = asyncio.Event()
        keep = timedelta(hours=settings.processed_updates_keep_h)
        pruning = asyncio.create_task(_prune(ProcessedUpdates(product.services.db), keep, chores))
        exits.push_async_callback(_stopped, pruning, chores)
        try:
            polling = await _start_updates(product, settings, routes, stop)
        except TelegramAPIError as exc:
            log.error("Telegram refused to start the bot: %s", exc)
            return 1
        heap.settle()
        log.info("serving", extra={"host": settings.host, "port": settings.port})
        if on_ready is not None:
            on_ready()
        crashed = await _until_stopped(stop, polling)
        log.info("shutting down")
        routes.drain()
        if polling is not None and not crashed:
            await polling
    log.info("stopped")
    return 1 if crashed else 0


async def _until_stopped(stop: asyncio.Event, polling: asyncio.Task[None] | None) -> bool:
    """Waits for the stop signal; True if polling died first (a process that no longer
    receives updates must exit, so that its supervisor restarts it)."""
    stopping = asyncio.ensure_future(stop.wait())
    watched: set[asyncio.Future[Any]] = {stopping, *([polling] if polling else [])}
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set() or polling is None:
        return False
    stopping.cancel()
    error = polling.exception() if not polling.cancelled() else None
    log.error("polling stopped by itself", exc_info=error)
    return True


def main(migrate: bool = False) -> int:
    """`trt serve`: settings read and checked first, then logging, then the service."""
    try:
        every = read_all()
    except ValueError as exc:
        for line in str(exc).splitlines():
            print(f"trt serve: {line}", file=sys.stderr)
        return 2
    settings = next(item for item in every if isinstance(item, Settings))
    configure_logging(
        level=settings.log_level, json_lines=settings.json_logs, secrets=secret_values(every)
    )
    return asyncio.run(serve(settings, migrate=migrate))
