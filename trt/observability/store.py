"""The conversation store, binding the conversation's state to the log context.

The engine reads the state first thing in every update and writes it on every
move, so wrapping its store is how each log line of an update learns which
screen the user was on, without the engine knowing about logs.
"""

from __future__ import annotations

from engine.store import Snapshot, StateStore
from trt.observability.context import bind


class CorrelatedStore:
    """An engine.store.StateStore around another one."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner

    async def load(self, key: str, fresh: bool = False) -> Snapshot | None:
        snap = await self.inner.load(key, fresh)
        if snap is not None:
            bind(state=snap.state)
        return snap

    async def save(self, key: str, snapshot: Snapshot, expected_counter: int | None) -> bool:
        saved = await self.inner.save(key, snapshot, expected_counter)
        if saved:
            bind(state=snapshot.state)
        return saved
