"""Telegram update ids already handled: what makes a redelivered update harmless.

Telegram delivers an update again whenever it did not get a 2xx in time (our
answer was lost, the process died after the work, a second replica got it), so
the transport records each handled id and skips ids it has seen. The record is
made after the update was handled, never before: a crash between the two means
one more delivery (the engine's compare-and-set and marks make that harmless),
whereas a record made first would turn a crash into a lost update.

The same argument lets the write come later still: records are written behind
(`record` returns at once; the ids of every update handled within FLUSH_EVERY_S
go in one INSERT). A process that dies before the write has acknowledged those
updates, and Telegram does not deliver an acknowledged update again; the one
that could come back, whose acknowledgement was lost, meets the engine's rules
exactly as after a crash before an awaited write. Until written, the ids are
known to this process (`seen` looks at them first), and the service writes them
when it stops (`close`). Under load the record costs a small fraction of a
statement per update instead of one each, off the update's path.

A tap (a callback query) whose conversation the conversation store holds in memory
is not looked up at all, unless this process handled it recently (it keeps the last
RECENT ids it handled). The engine needs no lookup to keep a tap from acting twice:
a tap carries the counter of the screen it was on, so a tap handled before either
made the current screen (the row's marks say so: its answer and screen again), or
left an action running (resumed under the same run key, as after an outage), or is
on a screen the conversation has left (the stale answer, which Telegram ignores for
a query it has answered, and the current screen on its message, as for any old
button); a copy another process overtook fails its move's compare-and-set, and the
engine then reads the row (engine.runtime.settle). Messages carry no such counter:
they are always looked up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import one_statement
from storage.conversation_store import SqlStateStore
from storage.db import insert_if_absent, write_transaction
from storage.models import ProcessedUpdate, table_of

_table = table_of(ProcessedUpdate)
_SEEN = select(_table.c.update_id).where(_table.c.update_id == bindparam("id"))

log = logging.getLogger(__name__)

# How long a handled id waits for its write, at most (a batch per interval).
FLUSH_EVERY_S = 0.2
# Ids kept unwritten while the database refuses them; beyond, the oldest are dropped
# (at worst one more handling of an update whose acknowledgement was lost).
MAX_PENDING = 100_000
# Ids this process handled, kept after their write so that a tap delivered again soon
# is acknowledged without the engine (the redelivery Telegram makes within seconds).
RECENT = 4096


class ProcessedUpdates:
    """The `processed_updates` table: insert-if-absent, so racing replicas never fail."""

    def __init__(
        self,
        engine: AsyncEngine,
        states: SqlStateStore | None = None,
        flush_every_s: float | None = None,
        holds: Callable[[str], bool] | None = None,
    ) -> None:
        """`states`: the conversation store on the same database, whose conversation
        `seen` then reads in the same statement (see `seen`). `flush_every_s`: the
        longest a recorded id waits for its write (default FLUSH_EVERY_S). `holds`:
        whether the conversation store answers a conversation from memory, which
        spares a tap's lookup (see the module's last paragraph)."""
        self._engine = engine
        self._insert = insert_if_absent(
            engine.dialect.name,
            _table,
            ["update_id"],
            {"update_id": bindparam("update_id"), "processed_at": bindparam("processed_at")},
        )
        self._flush_every_s = FLUSH_EVERY_S if flush_every_s is None else flush_every_s
        self._pending: dict[int, datetime] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._holds = holds
        self._flusher: asyncio.Task[None] | None = None
        # The conversation store and the statement that reads `seen` beside it.
        self._beside = (states, states.beside(_SEEN.scalar_subquery())) if states else None

    async def seen(
        self, update_id: int, conversation: str | None = None, tap: bool = False
    ) -> bool:
        """Whether `update_id` was handled. With the key of the `conversation` the update
        belongs to, that conversation is read in the same statement, for the update's
        first load: the hot path's two reads in one round trip. `tap`: the update is
        a callback query (see the module's last paragraph)."""
        if update_id in self._pending or update_id in self._recent:
            return True
        if tap and conversation is not None and self._holds and self._holds(conversation):
            return False
        if conversation is not None and self._beside is not None:
            states, statement = self._beside
            found = await states.read_beside(statement, {"id": update_id}, conversation)
            return found is not None
        return await one_statement.read(self._engine, _SEEN, {"id": update_id}) is not None

    def record(self, update_id: int) -> None:
        """Notes `update_id` as handled; it is written within FLUSH_EVERY_S."""
        self._pending[update_id] = datetime.now(UTC)
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        self._recent[update_id] = None
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_behind())

    async def _flush_behind(self) -> None:
        while self._pending:
            await asyncio.sleep(self._flush_every_s)
            try:
                await self.flush()
            except Exception as exc:  # kept, and tried again next interval
                log.warning(
                    "%d handled update ids not recorded yet: %s",
                    len(self._pending),
                    type(exc).__name__,
                )

    async def flush(self) -> None:
        """Writes every id recorded so far (raises what the write raised; the ids stay
        known and are tried again)."""
        if not self._pending:
            return
        taken = dict(self._pending)
        rows = [{"update_id": i, "processed_at": at} for i, at in taken.items()]
        await one_statement.write(self._engine, self._insert, rows)
        for update_id in taken:
            self._pending.pop(update_id, None)

    async def close(self) -> None:
        """Writes what is pending, as the service stops (its updates are all handled)."""
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await self.flush()
        except Exception as exc:
            log.warning(
                "%d handled update ids not recorded at shutdown: %s",
                len(self._pending),
                type(exc).__name__,
            )

    async def prune(self, before: datetime) -> int:
        """Forgets ids handled before `before`; Telegram gives up redelivering after a day."""
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(_table).where(_table.c.processed_at < before))
        return int(result.rowcount or 0)
