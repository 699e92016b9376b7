"""The ledger's writes on PostgreSQL: one call of a generated function per operation.

Why: as separate statements, a hold or a post cost about ten round trips and the
driver stack's CPU for each, which capped 16 workers far below 1000 pairs/s on two
cores. As one call in autocommit, an operation is one round trip. The functions are
compiled from the same programs SQLite runs (`storage.ledger_plpgsql`), and the
ledger tests run both, on SQLite and PostgreSQL.

The call goes over the driver's own connection (asyncpg), borrowed from SQLAlchemy's
pool: SQLAlchemy's execute path costs about three times the client CPU of the call
itself (measured: 507 against 170 microseconds per call), and this is the hottest
call in the service. Its errors are handed back as the SQLAlchemy exceptions retries
and outage handling know (IntegrityError, OperationalError for a dropped connection,
else DBAPIError with the driver's error and its SQLSTATE), and a dropped connection
is confirmed through SQLAlchemy, so its pool forgets the dead connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

# SQLSTATEs of a connection that is gone: class 08 (connection exception), and the
# server shutting down or crashing (admin_shutdown, crash_shutdown, cannot_connect_now).
_SERVER_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
# Class 23, integrity constraint violations, which SQLAlchemy raises as IntegrityError.
_INTEGRITY_CLASS = "23"

_statements: dict[tuple[str, tuple[str, ...]], str] = {}


def _statement(function: str, names: tuple[str, ...]) -> str:
    """`SELECT f(p_a => $1, ...)`: named notation, so the order of `args` never matters."""
    key = (function, names)
    if key not in _statements:
        bound = ", ".join(f"p_{name} => ${n}" for n, name in enumerate(names, 1))
        _statements[key] = f"SELECT {function}({bound})"
    return _statements[key]


async def call(
    conn: AsyncConnection,
    function: str,
    args: dict[str, Any],
    then: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Calls `function` in autocommit, its own transaction. With `then`, the call and
    `then(result)` share an explicit transaction, which an exception from `then`
    rolls back (the tests' fault hook)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    sql = _statement(function, tuple(args))
    values = list(args.values())
    hook_raised = False
    try:
        if then is None:
            result = await driver.fetchval(sql, *values)
        else:
            async with driver.transaction():
                result = await driver.fetchval(sql, *values)
                try:
                    then(_decoded(result))
                except BaseException:
                    hook_raised = True
                    raise
    except Exception as exc:
        # Whatever the driver raised (asyncpg also raises plain exceptions when a
        # connection dies mid-protocol); the hook's own exceptions pass unchanged.
        if hook_raised:
            raise
        raise await _as_sqlalchemy_error(conn, sql, values, exc) from exc
    return _decoded(result)


async def call_in_transaction(
    conn: AsyncConnection, function: str, args: dict[str, Any]
) -> dict[str, Any]:
    """Calls `function` through SQLAlchemy inside the transaction `conn` has begun, for
    the rare call whose companion writes must commit with it (an admin's audit row, a
    promo claim): slower than `call`, but one transaction with those writes."""
    bound = ", ".join(f"p_{name} => :{name}" for name in args)
    result = await conn.scalar(text(f"SELECT {function}({bound})"), args)
    return _decoded(result)


def _decoded(result: Any) -> dict[str, Any]:
    # SQLAlchemy's asyncpg dialect registers a jsonb codec on every connection it opens.
    assert isinstance(result, dict), result
    return result


def _maybe_dropped(exc: Exception) -> bool:
    """Errors a dead connection raises. Not among them: query cancellations (57014), and
    asyncpg's client-side DataError, a bad argument found before anything was sent
    (a ValueError, unlike everything else asyncpg raises)."""
    import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only: not at SQLite's start

    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] == "08" or state in _SERVER_GOING_AWAY
    return not isinstance(exc, ValueError)


async def _as_sqlalchemy_error(
    conn: AsyncConnection, sql: str, values: list[Any], exc: Exception
) -> DBAPIError:
    if _maybe_dropped(exc):
        # Asked through SQLAlchemy, a dead connection is seen by SQLAlchemy itself, which
        # then also replaces every pooled connection older than this one (after a server
        # restart all of them are dead). A connection that answers was not dropped.
        try:
            await conn.exec_driver_sql("SELECT 1")
        except DBAPIError as probe:
            if not probe.connection_invalidated:
                # Broken in a way SQLAlchemy does not recognise: never hand it out again.
                await conn.invalidate(exc)
            return OperationalError(sql, values, exc, connection_invalidated=True)
    state = str(getattr(exc, "sqlstate", "") or "")
    if state[:2] == _INTEGRITY_CLASS:
        return IntegrityError(sql, values, exc)
    return DBAPIError(sql, values, exc)


def passed_points(result: dict[str, Any]) -> list[str]:
    """The fault points the call went through, in order (none for a replay)."""
    return list(result.get("points", ()))
