"""The process's start-up objects kept out of the garbage collector's way.

A serving process builds a large, long-lived heap before its first update: the
flow, the catalog, every imported module, pydantic's and SQLAlchemy's compiled
schemas (about 280,000 objects). The cyclic collector would walk all of them on
every full collection and a third of them on every middle one, although none of
them ever becomes garbage. Freezing them after start-up moves them to a
permanent generation the collector skips: measured in-process, collection time
per navigation tap falls from about 0.5 ms to 0.2 ms. Objects made later (a
reloaded flow, a new catalog) are collected as usual.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collects start-up garbage once, then freezes what survived."""
    gc.collect()
    gc.freeze()
