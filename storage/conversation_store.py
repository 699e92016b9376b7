"""The SQL conversation store: the compare-and-set of engine.store, in one statement.

The check and the write happen inside the database (`UPDATE ... WHERE
counter = :expected`, `INSERT ... ON CONFLICT DO NOTHING`), never as a read
in Python followed by a write, so two processes cannot both win. Each call is
one statement in one short transaction; a single statement is atomic on its
own, so nothing else needs to be held between the check and the write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert, Update

from engine.store import Snapshot
from storage import retry
from storage.db import insert_if_absent, write_transaction
from storage.models import ConversationState, table_of

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_table = table_of(ConversationState)
_c = _table.c

# Built once at import: SQLAlchemy caches the compiled SQL per statement, so
# the hot path only binds parameters.
_LOAD = select(_c.state, _c.counter, _c.locale, _c.data).where(_c.key == bindparam("k"))

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


async def with_retries(operation: Callable[[], Awaitable[_T]]) -> _T:
    """Each store call is one statement, so any lock conflict can simply run it again."""
    return await retry.with_retries(operation, attempts=ATTEMPTS, base_s=BACKOFF_BASE_S)


class SqlStateStore:
    """engine.store.StateStore on SQLite or PostgreSQL, via the `conversation_state` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect.name
        if dialect not in _INSERTS:
            raise ValueError(f"SqlStateStore supports sqlite and postgresql, not {dialect!r}")
        if dialect == "postgresql":
            # With asyncpg, autocommit is a client-side flag: each call is one
            # round trip instead of three (BEGIN, statement, COMMIT).
            self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            # With aiosqlite, switching the isolation level costs thread hops on
            # every checkout, more than the transaction pysqlite opens only
            # around a write (a read runs in none).
            self._engine = engine
        self._insert = _INSERTS[dialect]

    async def load(self, key: str) -> Snapshot | None:
        async def run() -> Snapshot | None:
            async with self._engine.connect() as conn:
                row = (await conn.execute(_LOAD, {"k": key})).first()
            if row is None:
                return None
            state, counter, locale, data = row
            return Snapshot(state, counter, locale, dict(data or {}))

        return await with_retries(run)

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
            async with write_transaction(self._engine) as conn:
                result = await conn.execute(statement, params)
            return result.rowcount == 1

        return await with_retries(run)
