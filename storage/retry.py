"""Which database errors a retry can resolve, and the retry loop itself.

Retried only when the transaction certainly did not take effect, so a retry
can never apply a write twice. A dropped connection is not among them: the
commit may have landed before the reply was lost. Only calls whose own
idempotency key makes a rerun safe retry it (the ledger's PostgreSQL calls,
`storage.ledger.Ledger._function`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# serialization_failure, deadlock_detected, lock_not_available
_PG_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_PG_UNIQUE_VIOLATION = "23505"
_SQLITE_RETRY_MESSAGES = ("database is locked", "database table is locked")


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    found = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(found) if found else None


def is_transient(exc: DBAPIError) -> bool:
    """True for lock and serialization conflicts."""
    if exc.connection_invalidated:
        return False
    if _sqlstate(exc) in _PG_RETRY_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return any(text in message for text in _SQLITE_RETRY_MESSAGES)


def is_transient_or_duplicate(exc: DBAPIError) -> bool:
    """Also a unique violation: two calls with one key raced past its lookup, and the
    loser's rerun will find the winner's row."""
    if is_transient(exc):
        return True
    if not isinstance(exc, IntegrityError):
        return False
    return _sqlstate(exc) == _PG_UNIQUE_VIOLATION or "unique constraint" in str(exc.orig).lower()


async def with_retries(
    operation: Callable[[], Awaitable[_T]],
    *,
    attempts: int,
    base_s: float,
    cap_s: float = 0.5,
    retry_on: Callable[[DBAPIError], bool] = is_transient,
) -> _T:
    """Runs `operation`, retrying what `retry_on` accepts with full-jitter back-off, which
    spreads writers that collided at one instant so they do not collide again in lockstep."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except DBAPIError as exc:
            if attempt == attempts or not retry_on(exc):
                raise
            delay = random.uniform(0, min(cap_s, base_s * 2**attempt))
            log.debug("transient database conflict, retry %d in %.3fs: %s", attempt, delay, exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
