"""Which exceptions mean "the database cannot be reached right now".

The transport uses it to refuse an update (non-2xx, so Telegram delivers it
again) instead of acknowledging work that never happened. Only outages count:
a constraint violation or a bug would fail the same way on every delivery, so
retrying it would help nobody.
"""

from __future__ import annotations

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

# PostgreSQL SQLSTATE classes and codes of a server that is down, refusing, or gone:
# 08 connection exception, 53 insufficient resources (too many connections),
# 57 operator intervention (shutdown, cannot connect now), 3D000 no such database,
# 55000 "database is not currently accepting connections".
_PG_CLASSES = ("08", "53", "57")
_PG_CODES = frozenset({"3D000", "55000"})


def _sqlstate(exc: DBAPIError) -> str:
    found = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(found or "")


def _one_is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        code = _sqlstate(exc)
        return exc.connection_invalidated or code in _PG_CODES or code[:2] in _PG_CLASSES
    # asyncpg raises these raw when the server does not answer at all.
    return isinstance(exc, ConnectionError | TimeoutError)


def is_unavailable(exc: BaseException) -> bool:
    """True if `exc`, or an exception it was raised from, is a database outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _one_is_unavailable(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
