"""The ledger's one description: what a program may say, and that both databases' runners
treat a diagnosis that finds no broken rule as "run again", never as a refusal."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, literal, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import ledger_plpgsql
from storage.ledger_interpreter import Interpreter
from storage.ledger_program import (
    ACCOUNT,
    AMOUNT,
    NOW,
    RETRY,
    Need,
    Program,
    Run,
    accounts,
    programs,
)
from storage.retry import is_transient

# Touches no row (no account has id -1), and its diagnosis finds nothing wrong.
_NOTHING = update(accounts).where(accounts.c.id == -1).values(debits_posted=AMOUNT())
_NOTHING_WRONG = select(literal(RETRY).label("code"))


def _changing(name: str) -> Program:
    return Program(name, (AMOUNT, NOW), (Need(_NOTHING, _NOTHING_WRONG),), keyed=False)


def test_a_need_after_a_write_is_refused_when_the_program_is_built() -> None:
    """A refusal commits, so it may not follow a write: it would keep half a move."""
    with pytest.raises(ValueError, match="after a write"):
        Program("bad", (AMOUNT, NOW), (Run(_NOTHING), Need(_NOTHING, _NOTHING_WRONG)), False)
    # Reads, then the one write that may refuse, is how every program starts.
    assert Program("good", (AMOUNT, NOW), (Need(_NOTHING, _NOTHING_WRONG),), False)


def test_an_undeclared_value_fails_the_generator_instead_of_becoming_null() -> None:
    typo = update(accounts).where(accounts.c.id == bindparam("acount")).values(debits_posted=0)
    program = Program("typo", (ACCOUNT, NOW), (Run(typo),), keyed=False)
    with pytest.raises(KeyError, match="acount"):
        ledger_plpgsql.function_text(program, "t")


def test_the_functions_are_named_by_the_digest_of_their_text() -> None:
    version = ledger_plpgsql.digest()
    for name in programs("postgresql"):
        function = ledger_plpgsql.function_name(name)
        assert function == f"ledger_{name}_{version}"
        assert any(s.startswith(function + "(") for s in ledger_plpgsql.definitions())


async def test_a_diagnosis_that_finds_no_broken_rule_runs_the_call_again(
    db_engine: AsyncEngine,
) -> None:
    """A row that changed between a statement and its diagnosis (a concurrent commit on
    PostgreSQL) is a serialization failure, which the ledger's retry loop runs again;
    SQLite's single writer cannot get there, and says so if it ever does."""
    program = _changing("changing")
    if db_engine.dialect.name == "postgresql":
        async with db_engine.begin() as conn:
            await conn.exec_driver_sql(ledger_plpgsql.function_text(program, "t"))
        with pytest.raises(DBAPIError) as caught:
            async with db_engine.begin() as conn:
                await conn.execute(text("SELECT ledger_changing_t(p_amount => 1, p_now => now())"))
        assert getattr(caught.value.orig, "sqlstate", None) == "40001"
        assert is_transient(caught.value)  # what Ledger's retry loop runs again
        return
    interpreter = Interpreter("sqlite")
    interpreter.programs = {**interpreter.programs, "changing": program}
    with pytest.raises(RuntimeError, match="changed during the call"):
        async with db_engine.begin() as conn:
            await interpreter.run(conn, "changing", {"amount": 1, "now": None}, lambda _: None)
