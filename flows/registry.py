"""The product's registry: every action and provider that flows.yaml names and Python implements."""

from __future__ import annotations

from collections.abc import Callable

from engine.registry import Registry
from flows.account_screens import register_account_screens
from flows.catalog_menus import register_catalog_menus
from flows.generate_action import register_generate
from flows.services import Services
from pricing.catalog import Catalog, load_catalog


def build_registry(
    catalog: Catalog | None = None,
    services: Services | None = None,
    image_url: Callable[[str], str] | None = None,
) -> Registry:
    """`services` may be None where no database is wanted (`trt flows check`, the engine
    benchmark): everything is registered, and what needs money or jobs fails if used."""
    registry = Registry()
    current = catalog or load_catalog()
    register_catalog_menus(registry, current)
    need = Services.need(services)
    register_account_screens(registry, need)
    register_generate(registry, need, lambda: current, image_url or _no_images)
    return registry


def _no_images(file_id: str) -> str:
    raise LookupError("no public URL is configured for images (PUBLIC_BASE_URL)")
