"""Which exceptions mean "the database cannot be reached right now".

The transport uses it to refuse an update (non-2xx, so Telegram delivers it
again) instead of acknowledging work that never happened. Only outages count:
a constraint violation or a bug would fail the same way on every delivery, so
retrying it would help nobody.
"""

from __future__ import annotations

import sqlite3

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


# SQLite result codes of a database that is busy or cannot be reached for now. SQLite
# raises OperationalError for schema mistakes too ("no such column" is SQLITE_ERROR):
# those fail on every delivery, so they are not an outage.
_SQLITE_TRANSIENT = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_PROTOCOL",
)
_SQLITE_TRANSIENT_WORDS = ("is locked", "is busy", "unable to open", "disk i/o", "is full")


def _sqlite_is_transient(orig: sqlite3.Error) -> bool:
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_SQLITE_TRANSIENT)
    # Raised by hand (tests, wrappers), without the code: read the message.
    message = str(orig).lower()
    return any(word in message for word in _SQLITE_TRANSIENT_WORDS)


def _one_is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, sqlite3.Error):
        return exc.connection_invalidated or _sqlite_is_transient(exc.orig)
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
