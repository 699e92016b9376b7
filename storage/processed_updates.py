"""Telegram update ids already handled: what makes a redelivered update harmless.

Telegram delivers an update again whenever it did not get a 2xx in time (our
answer was lost, the process died after the work, a second replica got it), so
the transport records each handled id and skips ids it has seen. The row is
written after the update was handled, never before: a crash between the two
means one more delivery (the engine's compare-and-set makes that harmless),
whereas a row written first would turn a crash into a lost update.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import insert_if_absent, write_transaction
from storage.models import ProcessedUpdate, table_of

_table = table_of(ProcessedUpdate)
_SEEN = select(_table.c.update_id).where(_table.c.update_id == bindparam("id"))


class ProcessedUpdates:
    """The `processed_updates` table: insert-if-absent, so racing replicas never fail."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect.name
        # One statement per call: autocommit on PostgreSQL saves the BEGIN/COMMIT trips.
        self._engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if dialect == "postgresql"
            else engine
        )
        self._dialect = dialect

    async def seen(self, update_id: int) -> bool:
        async with self._engine.connect() as conn:
            found = (await conn.execute(_SEEN, {"id": update_id})).first()
        return found is not None

    async def add(self, update_id: int) -> None:
        row = {"update_id": update_id, "processed_at": datetime.now(UTC)}
        statement = insert_if_absent(self._dialect, _table, ["update_id"], row)
        async with write_transaction(self._engine) as conn:
            await conn.execute(statement)

    async def prune(self, before: datetime) -> int:
        """Forgets ids handled before `before`; Telegram gives up redelivering after a day."""
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(_table).where(_table.c.processed_at < before))
        return int(result.rowcount or 0)
