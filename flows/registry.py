"""The product's registry: every action and provider that flows.yaml names and Python implements."""

from __future__ import annotations

from engine.registry import Registry
from flows.catalog_menus import register_catalog_menus
from pricing.catalog import Catalog, load_catalog


def build_registry(catalog: Catalog | None = None) -> Registry:
    registry = Registry()
    register_catalog_menus(registry, catalog or load_catalog())
    return registry
