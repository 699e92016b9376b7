"""The SQL conversation store: the compare-and-set of engine.store, in one statement.

The check and the write happen inside the database (`UPDATE ... WHERE
counter = :expected`, `INSERT ... ON CONFLICT DO NOTHING`), never as a read
in Python followed by a write, so two processes cannot both win. Each call is
one statement in one short transaction; a single statement is atomic on its
own, so nothing else needs to be held between the check and the write.

The same rule lets a load answer from memory: the store keeps the last snapshot
this process read or wrote of each recent conversation (a bounded LRU), and a
move made from a copy that another process has since overtaken fails its
compare-and-set, which drops the copy, so the engine's retry reads the row. A
navigation tap is then one statement, the move. Loads that lead to an effect
without a compare-and-set ask for the row (`fresh`, engine.store.Snapshot.cached).
What a copy can miss without failing the compare-and-set is only what another process
noted in place, at the same counter: advisory marks (which message shows what, that a
callback was answered), whose loss costs at most an edit Telegram refuses or a second
answer to a callback query, which Telegram ignores.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ScalarSelect, Select, bindparam, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert, Update

from engine.store import Snapshot
from storage import one_statement, retry
from storage.db import insert_if_absent
from storage.models import ConversationState, table_of

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_table = table_of(ConversationState)
_c = _table.c

# Built once at import: SQLAlchemy caches the compiled SQL per statement, so
# the hot path only binds parameters.
_LOAD = select(_c.state, _c.counter, _c.locale, _c.data).where(_c.key == bindparam("k"))

# A conversation read ahead for the update being handled (`read_beside`), and given to
# that update's first load of it instead of a second statement. Each update is handled
# in a task of its own (a webhook request, a polled update), so it is never another's.
_read_ahead: ContextVar[tuple[str, Snapshot | None] | None] = ContextVar(
    "conversation_read_ahead", default=None
)


def _snapshot(row: Any) -> Snapshot | None:
    if row is None or row.state is None:
        return None
    return Snapshot(row.state, row.counter, row.locale, dict(row.data or {}))


_NEW_VALUES: dict[str, Any] = {
    "state": bindparam("new_state", type_=_c.state.type),
    "counter": bindparam("new_counter", type_=_c.counter.type),
    "locale": bindparam("new_locale", type_=_c.locale.type),
    "data": bindparam("new_data", type_=_c.data.type),
    "updated_at": bindparam("now", type_=_c.updated_at.type),
}

_CAS = (
    update(_table)
    .where(_c.key == bindparam("k"), _c.counter == bindparam("expected"))
    .values(**_NEW_VALUES)
)


_INSERTS = {
    name: insert_if_absent(
        name, _table, ["key"], {"key": bindparam("k", type_=_c.key.type), **_NEW_VALUES}
    )
    for name in ("sqlite", "postgresql")
}

ATTEMPTS = 4
BACKOFF_BASE_S = 0.01
# Conversations whose last snapshot is kept (a few hundred bytes each).
CACHE_SIZE = 4096


async def with_retries(operation: Callable[[], Awaitable[_T]]) -> _T:
    """Each store call is one statement, so any lock conflict can simply run it again."""
    return await retry.with_retries(operation, attempts=ATTEMPTS, base_s=BACKOFF_BASE_S)


class SqlStateStore:
    """engine.store.StateStore on SQLite or PostgreSQL, via the `conversation_state` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect.name
        if dialect not in _INSERTS:
            raise ValueError(f"SqlStateStore supports sqlite and postgresql, not {dialect!r}")
        # Every call is one statement, its own transaction (storage.one_statement).
        self._insert = _INSERTS[dialect]
        self.db = engine
        self._copies: OrderedDict[str, Snapshot] = OrderedDict()

    def holds(self, key: str) -> bool:
        """Whether a load of `key` answers from this process's memory (no read)."""
        return key in self._copies

    def _keep(self, key: str, snap: Snapshot | None) -> None:
        if snap is None:
            self._copies.pop(key, None)
            return
        self._copies[key] = Snapshot(snap.state, snap.counter, snap.locale, dict(snap.data))
        self._copies.move_to_end(key)
        if len(self._copies) > CACHE_SIZE:
            self._copies.popitem(last=False)

    def beside(self, value: ScalarSelect[Any]) -> Select[Any]:
        """One statement reading `value` and the conversation :k (for `read_beside`)."""
        one = select(literal(1).label("one")).subquery()
        return select(value.label("beside"), _c.state, _c.counter, _c.locale, _c.data).select_from(
            one.outerjoin(_table, _c.key == bindparam("k"))
        )

    async def read_beside(self, statement: Select[Any], params: dict[str, Any], key: str) -> Any:
        """Runs `statement` (from `beside`) and returns its value; the conversation `key`
        it read too is what this update's first `load(key)` returns: the same read, one
        round trip earlier, so as current as the load it saves."""
        row = await one_statement.read(self.db, statement, {**params, "k": key})
        assert row is not None  # the outer join of one row always returns one
        _read_ahead.set((key, _snapshot(row)))
        return row.beside

    async def load(self, key: str, fresh: bool = False) -> Snapshot | None:
        ahead = _read_ahead.get()
        if ahead is not None and ahead[0] == key:
            _read_ahead.set(None)  # once: a later load (after a lost race) reads again
            self._keep(key, ahead[1])
            return ahead[1]
        copy = None if fresh else self._copies.get(key)
        if copy is not None:
            self._copies.move_to_end(key)
            return Snapshot(copy.state, copy.counter, copy.locale, dict(copy.data), cached=True)

        async def run() -> Snapshot | None:
            return _snapshot(await one_statement.read(self.db, _LOAD, {"k": key}))

        snap = await with_retries(run)
        self._keep(key, snap)
        return snap

    async def save(self, key: str, snapshot: Snapshot, expected_counter: int | None) -> bool:
        params: dict[str, Any] = {
            "k": key,
            "new_state": snapshot.state,
            "new_counter": snapshot.counter,
            "new_locale": snapshot.locale,
            "new_data": snapshot.data,
            "now": datetime.now(UTC),
        }
        statement: Insert | Update
        if expected_counter is None:
            statement = self._insert
        else:
            statement = _CAS
            params["expected"] = expected_counter

        async def run() -> bool:
            return await one_statement.write(self.db, statement, params) == 1

        try:
            saved = await with_retries(run)
        except BaseException:
            self._copies.pop(key, None)  # written or not: unknown
            raise
        self._keep(key, snapshot if saved else None)
        return saved
