"""Where conversation state lives, and the compare-and-set rule that guards it.

Every move of a conversation bumps `counter`; a write succeeds only if the
stored counter is still the one the writer read. That single rule is what
makes a double tap, a stale button or a second process unable to run an
action twice: the loser of the race sees a failed write, not a second run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Snapshot:
    state: str
    counter: int
    locale: str
    data: dict[str, Any] = field(default_factory=dict)
    # True when the store answered from what this process last read or wrote, not from
    # the stored row: as good as the row for a move (its compare-and-set fails if
    # another process moved the conversation since), but not for an effect made without
    # one (a stale toast, a repeated answer); the engine reads `fresh` for those.
    cached: bool = field(default=False, compare=False, repr=False)


class StateStore(Protocol):
    async def load(self, key: str, fresh: bool = False) -> Snapshot | None:
        """The stored snapshot, or None for a conversation never seen. `fresh`: read
        the stored row even if the store keeps a copy (see Snapshot.cached)."""
        ...

    async def save(self, key: str, snapshot: Snapshot, expected_counter: int | None) -> bool:
        """Write `snapshot` if the stored counter equals `expected_counter`.

        `expected_counter=None` means "only if nothing is stored yet".
        Returns False, writing nothing, when another writer got there first.
        """
        ...


class MemoryStore:
    """A process-local store; the compare-and-set holds within one event loop."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, int, str, dict[str, Any]]] = {}

    def holds(self, key: str) -> bool:
        """Whether `key` has a conversation: this store is the only truth there is."""
        return key in self._rows

    async def load(self, key: str, fresh: bool = False) -> Snapshot | None:
        row = self._rows.get(key)
        if row is None:
            return None
        state, counter, locale, data = row
        return Snapshot(state, counter, locale, dict(data))

    async def save(self, key: str, snapshot: Snapshot, expected_counter: int | None) -> bool:
        row = self._rows.get(key)
        current = None if row is None else row[1]
        if current != expected_counter:
            return False
        self._rows[key] = (snapshot.state, snapshot.counter, snapshot.locale, dict(snapshot.data))
        return True
