"""Telegram update ids already handled: what makes a redelivered update harmless.

Telegram delivers an update again whenever it did not get a 2xx in time (our
answer was lost, the process died after the work, a second replica got it), so
the transport records each handled id and skips ids it has seen. The row is
written after the update was handled, never before: a crash between the two
means one more delivery (the engine's compare-and-set makes that harmless),
whereas a row written first would turn a crash into a lost update.

Records are group-committed: an `add` waits until its id is written, as before,
but the ids of updates that finish while one write is under way go together in
the next one (one INSERT of many rows), so under load the record costs a fraction
of a transaction per update instead of one each.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import one_statement
from storage.conversation_store import SqlStateStore
from storage.db import insert_if_absent, write_transaction
from storage.models import ProcessedUpdate, table_of

_table = table_of(ProcessedUpdate)
_SEEN = select(_table.c.update_id).where(_table.c.update_id == bindparam("id"))


class _Batch:
    """Ids waiting for one write, and the future their `add` calls wait on."""

    __slots__ = ("done", "rows")

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting (cancelled) must not leave an unread error.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())


class ProcessedUpdates:
    """The `processed_updates` table: insert-if-absent, so racing replicas never fail."""

    def __init__(self, engine: AsyncEngine, states: SqlStateStore | None = None) -> None:
        """`states`: the conversation store on the same database, whose conversation
        `seen` then reads in the same statement (see `seen`)."""
        dialect = engine.dialect.name
        self._engine = engine
        self._insert = insert_if_absent(
            dialect,
            _table,
            ["update_id"],
            {"update_id": bindparam("update_id"), "processed_at": bindparam("processed_at")},
        )
        self._next: _Batch | None = None
        self._writer: asyncio.Task[None] | None = None
        # The conversation store and the statement that reads `seen` beside it.
        self._beside = (states, states.beside(_SEEN.scalar_subquery())) if states else None

    async def seen(self, update_id: int, conversation: str | None = None) -> bool:
        """Whether `update_id` was handled. With the key of the `conversation` the update
        belongs to, that conversation is read in the same statement, for the update's
        first load: the hot path's two reads in one round trip."""
        if conversation is not None and self._beside is not None:
            states, statement = self._beside
            found = await states.read_beside(statement, {"id": update_id}, conversation)
            return found is not None
        return await one_statement.read(self._engine, _SEEN, {"id": update_id}) is not None

    async def add(self, update_id: int) -> None:
        """Returns once `update_id` is written (raises what the write raised)."""
        if self._next is None:
            self._next = _Batch()
        batch = self._next
        batch.rows.append({"update_id": update_id, "processed_at": datetime.now(UTC)})
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        await asyncio.shield(batch.done)

    async def _write_batches(self) -> None:
        while self._next is not None:
            batch, self._next = self._next, None
            try:
                await one_statement.write(self._engine, self._insert, batch.rows)
            except Exception as exc:
                batch.done.set_exception(exc)
            else:
                batch.done.set_result(None)

    async def prune(self, before: datetime) -> int:
        """Forgets ids handled before `before`; Telegram gives up redelivering after a day."""
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(_table).where(_table.c.processed_at < before))
        return int(result.rowcount or 0)
