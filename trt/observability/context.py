"""The correlation ids of the update or job being handled, for every log line inside it.

The ids live in structlog's contextvars, so a line logged anywhere below (the
engine, the ledger, the KIE client, aiogram) carries them without being passed
anything, and a task spawned inside an update (a job step) inherits them.
`scope` restores the previous ids on exit, because one task may handle several
updates or jobs in turn (the poller, a polling batch) and ids must not leak
from one to the next.

`UpdateReport` is the one mutable record of the update in flight: the pieces
that learn something about it (the Telegram session, flood control, the error
counter) write it, and the update middleware turns it into metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

CORRELATION_KEYS = ("update_id", "user_id", "chat_id", "state", "job_id")


@dataclass(slots=True)
class UpdateReport:
    kind: str
    started: float = field(default_factory=time.perf_counter)
    callback_query_id: str | None = None
    answered: bool = False
    errors: int = 0
    outcome: str | None = None  # set by whoever decided it (flood control)


_report: ContextVar[UpdateReport | None] = ContextVar("trt_update_report", default=None)


def current_report() -> UpdateReport | None:
    return _report.get()


@contextmanager
def scope(report: UpdateReport | None = None, **ids: Any) -> Iterator[None]:
    """Binds `ids` (None values are left out) until the block ends, then puts back exactly
    what was bound before, including anything bound inside the block."""
    before = get_contextvars()
    token = _report.set(report) if report is not None else None
    bind_contextvars(**{key: value for key, value in ids.items() if value is not None})
    try:
        yield
    finally:
        clear_contextvars()
        bind_contextvars(**before)
        if token is not None:
            _report.reset(token)


def bind(**ids: Any) -> None:
    """Adds ids to the current scope (the job once it is loaded, the state once read)."""
    bind_contextvars(**{key: value for key, value in ids.items() if value is not None})
