"""The serving process's start-up heap is frozen out of the collector's way (trt.heap)."""

from __future__ import annotations

import gc

from trt import heap


def test_settle_freezes_what_survived_start_up() -> None:
    survivor = [object() for _ in range(1000)]
    before = gc.get_freeze_count()
    try:
        heap.settle()
        assert gc.get_freeze_count() >= before + len(survivor)
        assert gc.get_count()[0] < 10  # and the collection before it ran
    finally:
        gc.unfreeze()
