"""The ledger's programs as PostgreSQL functions: generated, and installed by `trt migrate`.

Why generated: a ledger operation as one function call is one round trip, which is
what 16 writers on two cores need (separate statements cost about ten each). The
functions are compiled from `storage.ledger_program`, the statements SQLite runs, so
no rule is written twice. Parameters are `p_<name>`, locals `v_<name>`; every function
returns jsonb of the shape `storage.ledger_interpreter` documents, with the fault
points it passed, so the tests' fault hook sees the same points on both databases.

Why installed outside Alembic: a function is code derived from this repository, not
schema. Like Flyway's repeatable migrations, `install` replaces them whenever the
generated text changes (a digest kept in each function's comment), after the
migrations ran; `problem` tells a service started on functions of other code to run
`trt migrate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from sqlalchemy import Executable, Select, text
from sqlalchemy.dialects.postgresql.base import PGCompiler, PGDialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from storage.ledger_program import (
    BEFORE_KEY,
    OUTCOME,
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

PREFIX = "ledger_"
MARK = "trt ledger program "
# One installer at a time (replicas starting together); any constant shared by all.
_INSTALL_LOCK = text("SELECT pg_advisory_xact_lock(7301522811)")

_INSTALLED = text(
    "SELECT p.oid::regprocedure::text AS signature, obj_description(p.oid, 'pg_proc') AS note"
    " FROM pg_proc p WHERE p.proname LIKE 'ledger\\_%'"
    " AND p.pronamespace = current_schema()::regnamespace"
)


class _Compiler(PGCompiler):
    """Renders a program value as its PL/pgSQL name; any other bound value as a literal."""

    dialect: _Dialect

    def visit_bindparam(self, bindparam: BindParameter[Any], *args: Any, **kw: Any) -> Any:
        names = self.dialect.plpgsql_names
        if not bindparam.unique and bindparam.key in names:
            return names[bindparam.key]
        return self.render_literal_bindparam(bindparam, **kw)  # type: ignore[no-untyped-call]


class _Dialect(PGDialect):
    statement_compiler = _Compiler

    def __init__(self, names: Mapping[str, str]) -> None:
        # "named": a % is not doubled, as it would be for a driver's format string.
        super().__init__(paramstyle="named")  # type: ignore[no-untyped-call]
        self.plpgsql_names = names
        # No implicit RETURNING of an inserted key: PL/pgSQL would need a target for it.
        self.insert_returning = False


def _type(value: Value) -> str:
    return str(value.type.compile(dialect=_Dialect({})))


def _quoted(constant: str | int | bool) -> str:
    if isinstance(constant, bool):
        return "true" if constant else "false"
    if isinstance(constant, int):
        return str(constant)
    return "'" + constant.replace("'", "''") + "'"


def signature(program: Program) -> str:
    return f"{PREFIX}{program.name}({', '.join(_type(v) for v in program.params)})"


class _Writer:
    """The body of one program's function."""

    def __init__(self, program: Program) -> None:
        self.program = program
        names = {v.name: f"p_{v.name}" for v in program.params}
        names |= {v.name: f"v_{v.name}" for v in (*program.locals, OUTCOME)}
        self.dialect = _Dialect(names)
        self.names = names
        self.lines: list[str] = []
        # The fault points passed since `v_points` was last set (None: never set). Known
        # here, so they cost nothing at run time; only a callee's come back at run time.
        self.passed: list[str] = []
        self.points_var = False

    def points(self) -> str:
        """The points passed so far, as a jsonb expression."""
        static = "'" + json.dumps(self.passed) + "'::jsonb"
        return f"v_points || {static}" if self.points_var else static

    def sql(self, statement: Executable) -> str:
        assert isinstance(statement, ClauseElement), statement
        return " ".join(str(statement.compile(dialect=self.dialect)).split())

    def emit(self, line: str, depth: int = 1) -> None:
        self.lines.append("  " * depth + line)

    def refuse(self, depth: int) -> None:
        """Returns `v_refusal` ({refused, values}) with the points passed; a keyed
        program keeps it with its key first."""
        passed = list(self.passed)
        if self.program.keyed:
            self.passed.append(f"{self.program.name}:{BEFORE_KEY}")
            self.emit("v_outcome := v_refusal::json;", depth)
            self.emit(self.sql(claim("postgresql").keep_refusal) + ";", depth)
        self.emit(f"RETURN v_refusal || jsonb_build_object('points', {self.points()});", depth)
        self.passed = passed

    def claim(self) -> None:
        statements = claim("postgresql")
        self.emit(self.sql(statements.take) + ";")
        self.emit("IF NOT FOUND THEN")
        found = self.sql(statements.found)
        self.emit(f"SELECT * INTO v_found_hash, v_found_outcome FROM ({found}) AS s;", 2)
        self.emit("IF v_found_hash <> p_hash THEN", 2)
        self.emit("RETURN jsonb_build_object('conflict', true);", 3)
        self.emit("END IF;", 2)
        replayed = self.sql(replayed_transfer())
        self.emit(
            "RETURN jsonb_build_object('replay', v_found_outcome::jsonb,"
            f" 'transfer', (SELECT to_jsonb(t) FROM ({replayed}) AS t));",
            2,
        )
        self.emit("END IF;")

    def need(self, step: Need) -> None:
        into = ", ".join(self.names[v.name] for v in step.into)
        statement = self.sql(step.statement)
        if not step.into:
            self.emit(statement + ";")
        elif isinstance(step.statement, Select):
            self.emit(f"SELECT * INTO {into} FROM ({statement}) AS s;")
        else:
            self.emit(f"{statement} INTO {into};")
        self.emit("IF NOT FOUND THEN")
        self.emit(f"SELECT to_jsonb(d) INTO v_refusal FROM ({self.sql(step.otherwise)}) AS d;", 2)
        self.emit(
            "v_refusal := jsonb_build_object('refused', v_refusal->>'code',"
            " 'values', v_refusal - 'code');",
            2,
        )
        self.refuse(2)
        self.emit("END IF;")

    def call(self, call: Call) -> str:
        args = ", ".join(
            f"p_{name} => {self.names[arg.name] if isinstance(arg, Value) else _quoted(arg)}"
            for name, arg in call.args.items()
        )
        return f"{PREFIX}{call.program}({args})"

    def called(self, step: Call) -> None:
        self.emit(f"v_called := {self.call(step)};")
        self.emit(f"v_points := {self.points()} || (v_called->'points');")
        self.passed, self.points_var = [], True
        self.emit("IF v_called ? 'refused' THEN")
        for code, recovery in step.recover.items():
            self.emit(f"IF v_called->>'refused' = {_quoted(code)} THEN", 2)
            self.emit(f"v_points := v_points || ({self.call(recovery)}->'points');", 3)
            self.emit("END IF;", 2)
        self.emit("v_refusal := v_called - 'points';", 2)
        self.refuse(2)
        self.emit("END IF;")
        self.emit("v_transfer := v_called->'transfer';")

    def function(self) -> str:
        program = self.program
        if program.keyed:
            self.claim()
        for step in program.steps:
            if isinstance(step, Point):
                self.passed.append(step.name)
            elif isinstance(step, Run):
                self.emit(self.sql(step.statement) + ";")
            elif isinstance(step, Record):
                self.emit(f"{self.sql(step.statement)} INTO v_record;")
                self.emit("v_transfer := to_jsonb(v_record);")
            elif isinstance(step, Need):
                self.need(step)
            else:
                self.called(step)
        if program.keyed:
            self.passed.append(f"{program.name}:{BEFORE_KEY}")
        self.emit(f"RETURN jsonb_build_object('transfer', v_transfer, 'points', {self.points()});")
        declared = ["v_points jsonb", "v_record record", "v_transfer jsonb", "v_refusal jsonb"]
        declared += ["v_called jsonb"] * any(isinstance(s, Call) for s in program.steps)
        declared += [f"v_{v.name} {_type(v)}" for v in program.locals]
        if program.keyed:
            declared += ["v_found_hash text", "v_found_outcome json", "v_outcome json"]
        params = ", ".join(f"p_{v.name} {_type(v)}" for v in program.params)
        return "\n".join(
            [
                f"CREATE FUNCTION {PREFIX}{program.name}({params}) RETURNS jsonb",
                "LANGUAGE plpgsql AS $$",
                "DECLARE",
                *(f"  {line};" for line in declared),
                "BEGIN",
                *self.lines,
                "END $$",
            ]
        )


@cache
def definitions() -> dict[str, str]:
    """Each function's signature and its CREATE FUNCTION."""
    return {
        signature(program): _Writer(program).function()
        for program in programs("postgresql").values()
    }


@cache
def digest() -> str:
    whole = "\n".join(definitions().values())
    return hashlib.sha256(whole.encode()).hexdigest()[:16]


async def _installed(conn: AsyncConnection) -> dict[str, str | None]:
    return {row.signature: row.note for row in await conn.execute(_INSTALLED)}


async def problem(conn: AsyncConnection) -> str | None:
    """Why the database's ledger functions are not this code's, or None."""
    notes = set((await _installed(conn)).values())
    if len(await _installed(conn)) == len(definitions()) and notes == {MARK + digest()}:
        return None
    return "the database's ledger functions are not this code's: run `trt migrate`"


async def install(conn: AsyncConnection) -> bool:
    """Replaces the ledger functions when they are not this code's, in the caller's
    transaction; True when it did."""
    await conn.execute(_INSTALL_LOCK)
    if await problem(conn) is None:
        return False
    for old in await _installed(conn):
        await conn.exec_driver_sql(f"DROP FUNCTION {old}")
    for name, definition in definitions().items():
        # One statement per execute: asyncpg prepares each, and it holds one command.
        await conn.exec_driver_sql(definition)
        await conn.exec_driver_sql(f"COMMENT ON FUNCTION {name} IS '{MARK}{digest()}'")
    return True
