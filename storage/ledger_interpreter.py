"""Runs a ledger program statement by statement, in the caller's transaction (SQLite).

Why a runner rather than Python per operation: the rules live once, in
`storage.ledger_program`; this module knows only what its five kinds of step mean,
exactly as `storage.ledger_plpgsql` does for PostgreSQL. Its result has the shape of
the PostgreSQL functions' jsonb, so the ledger reads both alike:

    {"transfer": row, "points": [...]}                      applied
    {"refused": code, "values": {...}, "points": [...]}     refused (kept with the key)
    {"replay": stored outcome, "transfer": row or None}     the key was used, same request
    {"conflict": True}                                      the key was used, other request
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.sql.visitors import iterate

from storage.ledger_program import (
    BEFORE_KEY,
    RETRY,
    Call,
    Need,
    Point,
    Program,
    Record,
    Run,
    Value,
    claim,
    programs,
    replayed_transfer,
)
from storage.ledger_values import utc

# By id, with the statement itself, so no other statement can take a collected one's id.
_binds: dict[int, tuple[Executable, tuple[str, ...]]] = {}


def _names(statement: Executable) -> tuple[str, ...]:
    """The program values a statement binds (not its anonymous literals)."""
    key = id(statement)
    if key not in _binds:
        found = {
            element.key
            for element in iterate(cast(ClauseElement, statement))
            if isinstance(element, BindParameter) and not element.unique
        }
        _binds[key] = (statement, tuple(sorted(found)))
    return _binds[key][1]


async def _execute(
    conn: AsyncConnection, statement: Executable, env: Mapping[str, Any]
) -> CursorResult[Any]:
    return await conn.execute(statement, {name: env[name] for name in _names(statement)})


def plain(value: Any) -> Any:
    """A refusal's value as JSON keeps it (the key stores it; PostgreSQL's to_jsonb
    writes a timestamp as its ISO text)."""
    return utc(value).isoformat() if isinstance(value, datetime) else value


class Interpreter:
    """Programs for one dialect; `passed` sees each fault point as the run reaches it."""

    def __init__(self, dialect: str) -> None:
        self.programs = programs(dialect)
        self.claim = claim(dialect)
        self.replayed = replayed_transfer()

    async def run(
        self,
        conn: AsyncConnection,
        name: str,
        values: Mapping[str, Any],
        passed: Callable[[str], None],
    ) -> dict[str, Any]:
        program = self.programs[name]
        env = dict(values)
        if program.keyed and (replayed := await self._claim(conn, env)) is not None:
            return replayed
        points: list[str] = []

        def point(name: str) -> None:
            points.append(name)
            passed(name)

        result = await self._steps(conn, program, env, point)
        if program.keyed:
            point(f"{name}:{BEFORE_KEY}")
            if "refused" in result:
                kept = {"refused": result["refused"], "values": result["values"]}
                await _execute(conn, self.claim.keep_refusal, {**env, "outcome": kept})
        return {**result, "points": points}

    async def _claim(self, conn: AsyncConnection, env: dict[str, Any]) -> dict[str, Any] | None:
        if (await _execute(conn, self.claim.take, env)).rowcount == 1:
            return None
        found = (await _execute(conn, self.claim.found, env)).one()
        if found.request_hash != env["hash"]:
            return {"conflict": True}
        transfer = (await _execute(conn, self.replayed, env)).first()
        return {
            "replay": found.outcome,
            "transfer": None if transfer is None else dict(transfer._mapping),
        }

    async def _steps(
        self,
        conn: AsyncConnection,
        program: Program,
        env: dict[str, Any],
        point: Callable[[str], None],
    ) -> dict[str, Any]:
        transfer: dict[str, Any] | None = None
        for step in program.steps:
            if isinstance(step, Point):
                point(step.name)
            elif isinstance(step, Run):
                await _execute(conn, step.statement, env)
            elif isinstance(step, Record):
                transfer = dict((await _execute(conn, step.statement, env)).one()._mapping)
            elif isinstance(step, Need):
                if not await self._need(conn, step, env):
                    why = dict((await _execute(conn, step.otherwise, env)).one()._mapping)
                    code = why.pop("code")
                    if code == RETRY:
                        # One writer at a time on SQLite: nothing can change in between.
                        raise RuntimeError(f"{program.name}: a row changed during the call")
                    return {"refused": code, "values": {k: plain(v) for k, v in why.items()}}
            else:
                called = await self._call(conn, step, env, point)
                if "refused" in called:
                    if (recovery := step.recover.get(called["refused"])) is not None:
                        await self._call(conn, recovery, env, point)
                    return called
                transfer = called["transfer"]
        assert transfer is not None, f"program {program.name} recorded no transfer"
        return {"transfer": transfer}

    async def _need(self, conn: AsyncConnection, step: Need, env: dict[str, Any]) -> bool:
        result = await _execute(conn, step.statement, env)
        if not step.into:
            return result.rowcount == 1
        row = result.first()
        if row is None:
            return False
        env.update(zip((value.name for value in step.into), row, strict=True))
        return True

    async def _call(
        self,
        conn: AsyncConnection,
        call: Call,
        env: dict[str, Any],
        point: Callable[[str], None],
    ) -> dict[str, Any]:
        args = {
            name: env[arg.name] if isinstance(arg, Value) else arg
            for name, arg in call.args.items()
        }
        return await self._steps(conn, self.programs[call.program], args, point)
