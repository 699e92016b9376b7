"""The ledger's programs as PostgreSQL functions: generated, and installed by `trt migrate`.

Why generated: a ledger operation as one function call is one round trip, which is
what 16 writers on two cores need (separate statements cost about ten each). The
functions are compiled from `storage.ledger_program`, the statements SQLite runs, so
no rule is written twice. Parameters are `p_<name>`, locals `v_<name>`; every function
returns jsonb of the shape `storage.ledger_interpreter` documents, with the fault
points it passed, so the tests' fault hook sees the same points on both databases.

Why installed outside Alembic: a function is code derived from this repository, not
schema. `install` runs after the migrations, like Flyway's repeatable migrations.
Why versioned: the functions' names end in a digest of their text
(`ledger_post_<digest>`), and the code calls its own version. A rolling deploy's
`trt migrate` adds the new version while the old instances keep calling theirs, and
a rollback finds its version still there; `install` keeps the newest `KEEP`
versions it installed and drops older ones. Functions it did not install (another
tool's `ledger_*`, the hand-written ones of releases before this) are never touched.
`problem` tells a service whose version is missing to run `trt migrate`.
"""

from __future__ import annotations

import hashlib
import json
import re
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
from storage.ledger_source import INSTALLED, keyed

PREFIX = "ledger_"
_VERSION = "__version__"  # in the generated text until the digest of that text is known
MARK = "trt ledger program "  # + "<digest> #<n>": the nth version `install` installed
# ... and " source <key>/<count>" (storage.ledger_source), absent on older installs.
_NOTE = re.compile(re.escape(MARK) + r"([0-9a-f]+) #([0-9]+)(?: source [0-9a-f]+/[0-9]+)?$")
KEEP = 3  # versions kept: the new one and the two before it (instances still running)
# One installer at a time (replicas starting together); any constant shared by all.
_INSTALL_LOCK = text("SELECT pg_advisory_xact_lock(7301522811)")


class _Compiler(PGCompiler):
    """Renders a program value as its PL/pgSQL name; any other bound value as a literal."""

    dialect: _Dialect

    def visit_bindparam(self, bindparam: BindParameter[Any], *args: Any, **kw: Any) -> Any:
        if bindparam.unique:  # a literal of the program's, not one of its values
            return self.render_literal_bindparam(bindparam, **kw)  # type: ignore[no-untyped-call]
        names = self.dialect.plpgsql_names
        if bindparam.key not in names:
            # SQLite would fail on it too; here it would silently be NULL.
            raise KeyError(f"{bindparam.key!r} is not a value of this program")
        return names[bindparam.key]


class _Dialect(PGDialect):
    statement_compiler = _Compiler

    def __init__(self, names: Mapping[str, str]) -> None:
        # "named": a % is not doubled, as it would be for a driver's format string.
        super().__init__(paramstyle="named")  # type: ignore[no-untyped-call]
        self.plpgsql_names = names


def _type(value: Value) -> str:
    return str(value.type.compile(dialect=_Dialect({})))


def _quoted(constant: str | int | bool) -> str:
    if isinstance(constant, bool):
        return "true" if constant else "false"
    if isinstance(constant, int):
        return str(constant)
    return "'" + constant.replace("'", "''") + "'"


def _name(program: str) -> str:
    return f"{PREFIX}{program}_{_VERSION}"


def function_name(program: str) -> str:
    """The function this code calls for `program`: its own version's."""
    return _name(program).replace(_VERSION, digest())


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
        self.emit(f"IF v_refusal->>'refused' = {_quoted(RETRY)} THEN", 2)
        self.emit(
            f"RAISE EXCEPTION '{self.program.name}: a row changed during the call'"
            " USING ERRCODE = 'serialization_failure';",
            3,
        )
        self.emit("END IF;", 2)
        self.refuse(2)
        self.emit("END IF;")

    def call(self, call: Call) -> str:
        args = ", ".join(
            f"p_{name} => {self.names[arg.name] if isinstance(arg, Value) else _quoted(arg)}"
            for name, arg in call.args.items()
        )
        return f"{_name(call.program)}({args})"

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
                f"CREATE FUNCTION {_name(program.name)}({params}) RETURNS jsonb",
                "LANGUAGE plpgsql AS $$",
                "DECLARE",
                *(f"  {line};" for line in declared),
                "BEGIN",
                *self.lines,
                "END $$",
            ]
        )


def function_text(program: Program, version: str) -> str:
    """The CREATE FUNCTION of one program, as `version` of it."""
    return _Writer(program).function().replace(_VERSION, version)


@cache
def _generated() -> tuple[str, dict[str, str]]:
    """The digest of the generated text, and each function's signature and CREATE
    FUNCTION with the digest in its name."""
    texts = {}
    for program in programs("postgresql").values():
        types = ", ".join(_type(v) for v in program.params)
        texts[f"{_name(program.name)}({types})"] = function_text(program, _VERSION)
    version = hashlib.sha256("\n".join(texts.values()).encode()).hexdigest()[:16]
    named = {
        signature.replace(_VERSION, version): text.replace(_VERSION, version)
        for signature, text in texts.items()
    }
    return version, named


def digest() -> str:
    return _generated()[0]


def definitions() -> dict[str, str]:
    return _generated()[1]


async def _installed(conn: AsyncConnection) -> list[tuple[str, str, str | None]]:
    return [(row.signature, row.name, row.note) for row in await conn.execute(INSTALLED)]


def _version(note: str | None) -> tuple[str, int] | None:
    found = _NOTE.match(note or "")
    return (found.group(1), int(found.group(2))) if found else None


async def problem(conn: AsyncConnection) -> str | None:
    """Why this code's functions are not in the database, or None."""
    ours = {
        name for _, name, note in await _installed(conn) if (_version(note) or ("",))[0] == digest()
    }
    wanted = {signature.split("(")[0] for signature in definitions()}
    if wanted <= ours:
        return None
    return (
        f"the database lacks this code's ledger functions (version {digest()}): run `trt migrate`"
    )


async def _key(conn: AsyncConnection, installed: list[tuple[str, str, str | None]]) -> None:
    """This code's key on each function of its version (installed before keys were
    written, or from files that differ in what does not change the text), so that the
    next `trt migrate` knows it at once (storage.ledger_source)."""
    suffix = keyed(len(definitions()))
    for signature, _, note in installed:
        version = _version(note)
        if version is not None and version[0] == digest() and not (note or "").endswith(suffix):
            comment = f"{MARK}{digest()} #{version[1]}{suffix}"
            await conn.exec_driver_sql(f"COMMENT ON FUNCTION {signature} IS '{comment}'")


async def install(conn: AsyncConnection) -> bool:
    """Installs this code's version when it is missing, in the caller's transaction, and
    drops the versions older than the newest `KEEP`; True when it installed."""
    await conn.execute(_INSTALL_LOCK)
    installed = await _installed(conn)
    if await problem(conn) is None:
        await _key(conn, installed)
        return False
    wanted = {signature.split("(")[0] for signature in definitions()}
    for signature, name, _ in installed:
        if name in wanted:  # a partial or edited copy of this version
            await conn.exec_driver_sql(f"DROP FUNCTION {signature}")
    numbers = [v[1] for _, name, note in installed if (v := _version(note)) and name not in wanted]
    number = max(numbers, default=0) + 1
    for signature, definition in definitions().items():
        # One statement per execute: asyncpg prepares each, and it holds one command.
        await conn.exec_driver_sql(definition)
        comment = f"{MARK}{digest()} #{number}{keyed(len(definitions()))}"
        await conn.exec_driver_sql(f"COMMENT ON FUNCTION {signature} IS '{comment}'")
    for signature, name, note in installed:
        version = _version(note)
        if version is not None and name not in wanted and version[1] <= number - KEEP:
            await conn.exec_driver_sql(f"DROP FUNCTION {signature}")
    return True
