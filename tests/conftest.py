"""Fixtures shared across the suite.

Database fixtures run each test on SQLite and on PostgreSQL, every test on a
database of its own: a file under tmp_path, or a PostgreSQL database that no other
test uses meanwhile, made from a migrated template or put back as migrated after an
earlier test (tests/pg_databases.py). Without PostgreSQL the PostgreSQL half is
skipped locally but fails in CI, where a silent skip would hide a whole
backend.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import create_engine
from storage.migrate import upgrade_to_head
from storage.settings import DatabaseSettings
from tests import zygote
from tests.pg_databases import PostgresDatabases

_T = TypeVar("_T")

# ---------------------------------------------------------------- parallel runs

# Modules whose tests run together on one pytest-xdist worker, one test at a time: the
# fault cases share a costly session fixture (a running `trt serve`, started once); the
# ledger races open up to 50 PostgreSQL connections each and test_ledger's pool test 20
# (the server allows 100 in all: two races at once were refused "too many clients").
ONE_WORKER_GROUPS = {
    "tests/test_faults.py": "faults",
    "tests/test_ledger_concurrency.py": "many-connections",
    "tests/test_ledger.py": "many-connections",
}


def pytest_configure(config: pytest.Config) -> None:
    """The xdist controller starts the warm interpreter (tests/zygote.py) and has each
    worker forked from it instead of started cold: the workers skip seconds of imports."""
    tx = config.getoption("tx", None) or []
    if hasattr(config, "workerinput") or not tx:
        return
    zygote.ensure_running()
    client = f"{shlex.quote(sys.executable)} -S {shlex.quote(zygote.__file__)} python"
    config.option.tx = [f"popen//python={client}" if spec == "popen" else spec for spec in tx]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope`: every test its own scope, so workers balance as with `load`,
    except the modules of ONE_WORKER_GROUPS, one scope per group. (`--dist loadgroup`
    with an `xdist_group` mark would say the same, but does not group on this pytest.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ONE_WORKER_GROUPS.get(nodeid.split("::", 1)[0], nodeid)

    return Scheduling(config, log)


# ---------------------------------------------------------------- databases

DEFAULT_TEST_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DATABASES = ["sqlite", "postgresql"]


def run_on_own_loop(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even while a test's loop exists.

    A thread of its own keeps asyncio.run from touching the loop that
    pytest-asyncio has set for the main thread.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def in_ci() -> bool:
    """CI (and REQUIRE_POSTGRES=1, which .ci/run sets) must not skip what it cannot run:
    PostgreSQL, promtool. A skip there would hide a whole part of the suite."""
    return os.environ.get("CI") == "true" or os.environ.get("REQUIRE_POSTGRES") == "1"


async def _admin(url: URL, sql: str) -> None:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    """TEST_DATABASE_URL, once the server has answered; used to create test databases."""
    raw = os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL
    url = make_url(raw)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    try:
        run_on_own_loop(lambda: _admin(url, "SELECT 1"))
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        reason = (
            f"PostgreSQL at {url.render_as_string(hide_password=True)} did not answer "
            f"({type(exc).__name__}: {exc}); set TEST_DATABASE_URL or start the server"
        )
        if in_ci():
            pytest.fail(f"{reason}. CI / REQUIRE_POSTGRES=1 need PostgreSQL.", pytrace=False)
        pytest.skip(reason)
    return url


def _fresh_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


def _fresh_postgres_url(admin: URL, template: str | None = None) -> Iterator[str]:
    name = f"trt_test_{uuid.uuid4().hex[:16]}"
    like = f' TEMPLATE "{template}"' if template else ""
    run_on_own_loop(lambda: _admin(admin, f'CREATE DATABASE "{name}"{like}'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a test that forgot to dispose its engine must not leak the database.
        run_on_own_loop(lambda: _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own for this test, as a SQLAlchemy async URL."""
    if request.param == "sqlite":
        yield _fresh_sqlite_url(tmp_path)
        return
    yield from _fresh_postgres_url(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: URL) -> Iterator[str]:
    """A database migrated once per test process, which each test's database copies
    (CREATE DATABASE ... TEMPLATE): the migrations run in test_migrations.py, not
    before every test."""
    url = next(gen := _fresh_postgres_url(postgres_admin_url))
    upgrade_to_head(url)
    yield make_url(url).database or ""
    next(gen, None)


@pytest.fixture(scope="session")
def postgres_databases(
    postgres_admin_url: URL, postgres_template: str
) -> Iterator[PostgresDatabases]:
    """This test process's migrated PostgreSQL databases, put back for reuse after each
    test (tests/pg_databases.py), dropped at the end."""
    dsn = postgres_admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    databases = PostgresDatabases(dsn, postgres_template)
    yield databases
    run_on_own_loop(databases.drop_all)


@pytest.fixture(params=DATABASES)
def migrated_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own for this test, at the latest migration."""
    if request.param == "sqlite":
        from tests.harness import migrated_sqlite  # aiogram: not in the xdist controller

        yield migrated_sqlite(tmp_path / "bot.db")
        return
    admin: URL = request.getfixturevalue("postgres_admin_url")
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    name = run_on_own_loop(lambda: databases.take(f"trt_test_{uuid.uuid4().hex[:16]}"))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        run_on_own_loop(lambda: databases.give_back(name))


@pytest.fixture
async def db_engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The app's engine on a migrated database, disposed after the test."""
    engine = create_engine(DatabaseSettings(database_url=migrated_database_url))
    try:
        yield engine
    finally:
        await engine.dispose()
