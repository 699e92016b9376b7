"""Migrations on SQLite and PostgreSQL: up, again, down, up, and agreement with the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from alembic import command
from storage import ledger_plpgsql, ledger_source
from storage.db import create_engine
from storage.ledger import Ledger
from storage.migrate import (
    HEAD_REVISION,
    alembic_config,
    alembic_head,
    current_revision,
    downgrade_to_base,
    head_revision,
    migration_problem,
    upgrade_to_head,
)
from storage.models import metadata
from storage.settings import DatabaseSettings
from storage.users import ensure_user

_T = TypeVar("_T")
ROOT = Path(__file__).resolve().parent.parent


async def on_connection(url: str, work: Callable[[Connection], _T]) -> _T:
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


MONEY_TABLES = {"users", "accounts", "transfers", "entries", "holds", "idempotency_keys", "jobs"}


def test_the_written_head_is_the_head_alembic_finds() -> None:
    """HEAD_REVISION lets `trt migrate` skip Alembic at the head; a new migration must
    move it, or this fails."""
    assert head_revision() == HEAD_REVISION == alembic_head() == "0007"


async def test_a_database_at_the_head_is_left_alone_and_alembic_is_not_imported(
    migrated_database_url: str, tmp_path: Path
) -> None:
    """`trt migrate` on a database at the head: it answers without importing Alembic
    (on PostgreSQL after checking that this code's ledger functions are there, by their
    source key: without generating them)."""
    probe = (
        "import sys; from storage.migrate import upgrade_to_head; upgrade_to_head(sys.argv[1]);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'aiogram')"
        " or m in ('storage.ledger_plpgsql', 'storage.ledger_program')))"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", probe, migrated_database_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_upgrade_clean_database_to_head(database_url: str) -> None:
    assert await asyncio.to_thread(current_revision, database_url) is None

    await asyncio.to_thread(upgrade_to_head, database_url)

    assert await asyncio.to_thread(current_revision, database_url) == head_revision()
    tables = await on_connection(database_url, table_names)
    assert {"conversation_state", "alembic_version", "processed_updates"} | MONEY_TABLES <= tables

    def system_accounts(connection: Connection) -> set[str]:
        return set(connection.execute(text("SELECT code FROM accounts")).scalars())

    assert await on_connection(database_url, system_accounts) == {
        "revenue",
        "topups",
        "bonus",
        "adjustments",
    }

    def primary_key(connection: Connection) -> Any:
        return inspect(connection).get_pk_constraint("conversation_state")

    pk = await on_connection(database_url, primary_key)
    assert pk["constrained_columns"] == ["key"]
    assert pk["name"] == "pk_conversation_state"  # the naming convention, not a server default


async def test_second_upgrade_is_a_noop_and_keeps_rows(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)

    def insert(connection: Connection) -> None:
        connection.execute(
            text(
                "INSERT INTO conversation_state (key, state, counter, locale, data, updated_at) "
                "VALUES ('k', 's', 7, 'en', '{}', CURRENT_TIMESTAMP)"
            )
        )

    await on_connection(database_url, insert)

    await asyncio.to_thread(upgrade_to_head, database_url)

    assert await asyncio.to_thread(current_revision, database_url) == head_revision()

    def counters(connection: Connection) -> list[int]:
        return list(connection.execute(text("SELECT counter FROM conversation_state")).scalars())

    assert await on_connection(database_url, counters) == [7]


async def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)

    await asyncio.to_thread(downgrade_to_base, database_url)

    assert await asyncio.to_thread(current_revision, database_url) is None
    assert await on_connection(database_url, table_names) <= {"alembic_version"}

    await asyncio.to_thread(upgrade_to_head, database_url)

    assert await asyncio.to_thread(current_revision, database_url) == head_revision()
    assert "conversation_state" in await on_connection(database_url, table_names)


async def test_models_and_migrations_agree(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert await on_connection(database_url, diff) == []


async def test_migrating_from_inside_a_running_loop_works(database_url: str) -> None:
    # Called straight from a coroutine (not via to_thread): alembic's own
    # asyncio.run must not collide with the loop this test runs on.
    upgrade_to_head(database_url)
    assert current_revision(database_url) == head_revision()


async def test_downgrading_the_shards_folds_them_into_their_accounts(database_url: str) -> None:
    """0005 -> 0004 keeps every total: the shards' sums go back onto the account rows
    (and on PostgreSQL the ledger functions go)."""
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_engine(DatabaseSettings(database_url=database_url))
    try:
        ledger = Ledger(engine)
        account = await ensure_user(engine, 7)
        await ledger.credit("c1", account, 5_000, source="topups", reason="topup")
        await ledger.hold("h1", account, 2_000, expires_in=timedelta(minutes=1), reason="gen")
        await ledger.post("p1", "h1", 1_500)
        revenue = await conn_scalar(engine, "SELECT id FROM accounts WHERE code = 'revenue'")
        topups = await conn_scalar(engine, "SELECT id FROM accounts WHERE code = 'topups'")
        before = {a: await ledger.balance(a) for a in (account, revenue, topups)}
        assert before[revenue].posted == 1_500 and before[topups].posted == -5_000
        assert await conn_scalar(engine, "SELECT COUNT(*) FROM account_shards") == 2
    finally:
        await engine.dispose()

    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0004")

    assert "account_shards" not in await on_connection(database_url, table_names)

    def totals(connection: Connection) -> dict[int, tuple[int, int]]:
        rows = connection.execute(text("SELECT * FROM accounts")).all()
        return {
            r.id: (r.credits_posted - r.debits_posted, r.debits_pending - r.credits_pending)
            for r in rows
        }

    after = await on_connection(database_url, totals)
    assert {a: (b.posted, b.pending) for a, b in before.items()} == {a: after[a] for a in before}

    def functions(connection: Connection) -> int:
        return int(
            connection.execute(
                text("SELECT COUNT(*) FROM pg_proc WHERE proname LIKE 'ledger\\_%'")
            ).scalar_one()
        )

    if database_url.startswith("postgresql"):
        assert await on_connection(database_url, functions) == 0
        await asyncio.to_thread(upgrade_to_head, database_url)
        assert await on_connection(database_url, functions) == len(ledger_plpgsql.definitions())


async def conn_scalar(engine: Any, sql: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_ledger_functions_are_versioned_and_only_ours_are_replaced(
    database_url: str,
) -> None:
    """The functions are generated from the ledger's programs and named by their digest.
    A database lacking this code's version (or holding an edited copy of it) makes
    services refuse to start until `trt migrate` installs it; the newest versions before
    it stay for instances still running them, older ones go, and functions it did not
    install (an earlier release's, another tool's) are left alone."""
    url = database_url
    await asyncio.to_thread(upgrade_to_head, url)
    assert await migration_problem(url) is None

    def tamper(connection: Connection) -> None:
        for n, version in enumerate(("000000000000000a", "000000000000000b", "000000000000000c")):
            connection.execute(
                text(
                    f"CREATE FUNCTION ledger_post_{version}(p integer) RETURNS integer"
                    " LANGUAGE sql AS $$ SELECT p $$"
                )
            )
            connection.execute(
                text(
                    f"COMMENT ON FUNCTION ledger_post_{version}(integer)"
                    f" IS '{ledger_plpgsql.MARK}{version} #{n + 1}'"
                )
            )
        connection.execute(
            text(
                "CREATE FUNCTION ledger_claim(p_key text) RETURNS jsonb"
                " LANGUAGE sql AS $$ SELECT NULL::jsonb $$"
            )
        )
        current = next(iter(ledger_plpgsql.definitions()))
        connection.execute(text(f"COMMENT ON FUNCTION {current} IS 'edited by hand'"))

    await on_connection(url, tamper)
    problem = await migration_problem(url)
    assert problem is not None and "run `trt migrate`" in problem

    await asyncio.to_thread(upgrade_to_head, url)
    assert await migration_problem(url) is None

    def names(connection: Connection) -> set[str]:
        rows = connection.execute(
            text("SELECT proname FROM pg_proc WHERE proname LIKE 'ledger\\_%'")
        )
        return {row.proname for row in rows}

    generated = {name.split("(")[0] for name in ledger_plpgsql.definitions()}
    kept = {"ledger_post_000000000000000b", "ledger_post_000000000000000c", "ledger_claim"}
    assert await on_connection(url, names) == generated | kept

    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        async with engine.begin() as connection:
            assert await ledger_plpgsql.install(connection) is False
        account = await ensure_user(engine, 11)
        await Ledger(engine).credit("c1", account, 700, source="topups", reason="topup")
        assert (await Ledger(engine).balance(account)).available == 700
    finally:
        await engine.dispose()


def test_the_source_key_covers_every_module_the_functions_are_generated_from() -> None:
    """storage.ledger_source.SOURCES must name every module of ours that generating the
    ledger functions imports: a file left out could change the functions while the key
    said the installed ones were this code's."""
    probe = (
        "import sys; import sqlalchemy.ext.asyncio; before = set(sys.modules);"
        "from storage import ledger_plpgsql; ledger_plpgsql.definitions();"
        "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items()"
        " if n not in before and getattr(m, '__file__', None)"
        " and m.__file__.startswith(sys.argv[1]))))"
    )
    storage = str(ROOT / "storage") + os.sep
    done = subprocess.run(
        [sys.executable, "-c", probe, storage],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = {Path(line).relative_to(storage).as_posix() for line in done.stdout.split()}
    assert "ledger_program.py" in imported  # the probe saw the generator's imports
    assert imported - {"__init__.py"} <= set(ledger_source.SOURCES)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_migrate_at_the_head_trusts_the_key_only_when_every_function_carries_it(
    database_url: str,
) -> None:
    """The quick check at the head says yes only when all of this code's functions carry
    its key: a function dropped by hand is installed again, and functions installed
    before keys were written get them from the next `trt migrate`."""
    url = database_url
    await asyncio.to_thread(upgrade_to_head, url)

    async def quick() -> bool:
        engine = create_engine(DatabaseSettings(database_url=url))
        try:
            async with engine.connect() as connection:
                return await ledger_source.installed_here(connection)
        finally:
            await engine.dispose()

    assert await quick() is True
    first = next(iter(ledger_plpgsql.definitions()))

    def drop(connection: Connection) -> None:
        connection.execute(text(f"DROP FUNCTION {first}"))

    await on_connection(url, drop)
    assert await quick() is False
    await asyncio.to_thread(upgrade_to_head, url)
    assert await migration_problem(url) is None and await quick() is True

    def unkey(connection: Connection) -> None:
        note = f"{ledger_plpgsql.MARK}{ledger_plpgsql.digest()} #1"
        for signature in ledger_plpgsql.definitions():
            connection.execute(text(f"COMMENT ON FUNCTION {signature} IS '{note}'"))

    await on_connection(url, unkey)
    assert await quick() is False and await migration_problem(url) is None
    await asyncio.to_thread(upgrade_to_head, url)
    assert await quick() is True
