"""The catalog of a price file, cached and reloaded when the file changes.

`CatalogSource(path).current()` costs one `stat` when nothing changed: the file
is parsed again only when its modification time, size or inode differ from the
last read. A new file that does not load (bad JSON, schema, cross-field rules)
is logged and the last good catalog stays in use, so an editor's mistake never
takes the shop down; the same broken file is not parsed again until it changes.
Without any good catalog yet, `current()` raises `CatalogError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pricing.catalog import DEFAULT_PATH, Catalog, CatalogError, load_catalog

log = logging.getLogger(__name__)

CatalogProvider = Callable[[], Catalog]
_MISSING = (-1, -1, -1)


class CatalogSource:
    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._catalog: Catalog | None = None
        self._error = CatalogError([f"{self.path}: not read yet"])

    def current(self) -> Catalog:
        """The latest good catalog; raises CatalogError only while there has never been one."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reload(stamp)
        if self._catalog is None:
            raise self._error
        return self._catalog

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return _MISSING
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, stamp: tuple[int, int, int]) -> None:
        try:
            if stamp == _MISSING:
                raise CatalogError([f"{self.path}: cannot read the file"])
            catalog = load_catalog(self.path)
        except CatalogError as exc:
            self._error = exc
            if self._catalog is not None:
                log.error(
                    "pricing: %s cannot be used, keeping the previous catalog:\n%s", self.path, exc
                )
            return
        if self._catalog is not None:
            log.info("pricing: reloaded %s (%d models)", self.path, len(catalog.models))
        self._catalog = catalog


def catalog_provider(
    catalog: Catalog | CatalogSource | None = None, *, eager: bool = True
) -> CatalogProvider:
    """A function giving the catalog to use now: a fixed one (tests), or the file's latest.

    The default reads `pricing/KIE_PRICING_RUB.json`, once now so a broken file fails at
    start-up (unless not `eager`: a flows check that only reads names), then again
    whenever it changes.
    """
    if isinstance(catalog, Catalog):
        fixed = catalog
        return lambda: fixed
    source = catalog or CatalogSource()
    if eager:
        source.current()
    return source.current
