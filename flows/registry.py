"""The product's registry: every action and provider that flows.yaml names and Python implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.registry import Registry
from flows import text_keys
from flows.account_screens import register_account_screens
from flows.catalog_menus import register_catalog_menus
from flows.generate_action import register_generate
from flows.payments.screens import register_payment_screens
from pricing.source import CatalogSource, catalog_provider

if TYPE_CHECKING:  # the services (aiogram, the database) are not needed to list names
    from flows.services import Services
    from pricing.catalog import Catalog


def build_registry(
    catalog: Catalog | CatalogSource | None = None,
    services: Services | None = None,
    image_url: Callable[[str], str] | None = None,
    *,
    eager_prices: bool = True,
) -> Registry:
    """`services` may be None where no database is wanted (`trt flows check`, the engine
    benchmark): everything is registered, and what needs money or jobs fails if used.
    `catalog` None reads pricing/KIE_PRICING_RUB.json and rereads it when it changes, so
    editors' price changes apply without a restart; a fixed Catalog is for tests.
    `eager_prices` False leaves the price file unread until a menu needs it (the flows
    check, which only reads names)."""
    registry = Registry()
    current = catalog_provider(catalog, eager=eager_prices)
    register_catalog_menus(registry, current)
    need = _need(services)
    register_account_screens(registry, need)
    register_generate(registry, need, current, image_url or _no_images)
    register_payment_screens(registry, need)
    declare_texts(registry)
    return registry


def declare_texts(registry: Registry) -> None:
    """Every text of flows.yaml that the product's Python asks for by key (flows.text_keys),
    where it is shown and the longest value it fills into each: `trt flows check` proves
    each exists and fits, and a key not declared raises (engine.render.MissingText)."""
    for key in text_keys.NOTICES:
        registry.uses_text(key, "notice")
    for key, values in text_keys.CAPTIONS.items():
        registry.uses_text(key, "caption", **values)
    for key, values in text_keys.FILLED.items():
        registry.uses_text(key, "message", **values)
    for key in text_keys.PLAIN:
        registry.uses_text(key)


def _need(services: Services | None) -> Callable[[], Services]:
    def get() -> Services:
        if services is None:
            raise RuntimeError("this bot was built without a database")
        return services

    return get


def _no_images(file_id: str) -> str:
    raise LookupError("no public URL is configured for images (PUBLIC_BASE_URL)")
