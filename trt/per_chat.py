"""What aiogram's Dispatcher keeps per chat, kept only while an update of the chat runs.

The Dispatcher's FSM middleware takes a lock per chat (its event isolation) and reads
the chat's FSM state on every update. aiogram's in-memory versions keep something for
every chat they ever saw: SimpleEventIsolation a lock per chat (its own comment: "Unused
locks cleaner is needed"), MemoryStorage a record per chat, made by the read itself (a
defaultdict). A long-running `trt serve` grew with every new user. Conversation state
lives in the engine's store, never in aiogram's FSM, so:

- `ChatLocks` serialises the updates of one chat as before and forgets a chat's lock
  once no update of the chat holds it or waits for it;
- `NoFsmStorage` answers "no state, no data" and refuses to store any.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, StorageKey


@dataclass(slots=True)
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # updates holding the lock or waiting for it


class ChatLocks(BaseEventIsolation):
    """One update at a time per chat within a process; no lock kept for an idle chat."""

    def __init__(self) -> None:
        self._held: dict[StorageKey, _Held] = {}

    @property
    def chats(self) -> int:
        """Chats with an update running or waiting. (Not `__len__`: aiogram takes the
        isolation given with `events_isolation or DisabledEventIsolation()`, and an
        empty sized object is false.)"""
        return len(self._held)

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:  # also when cancelled while waiting
            held.users -= 1
            if held.users == 0:
                del self._held[key]

    async def close(self) -> None:
        self._held.clear()


class NoFsmStorage(BaseStorage):
    """aiogram's FSM storage for a dispatcher whose handlers keep no FSM state."""

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        if state is not None:
            raise NotImplementedError("conversation state lives in the engine's store")

    async def get_state(self, key: StorageKey) -> str | None:
        return None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if data:
            raise NotImplementedError("conversation data lives in the engine's store")

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        return None
