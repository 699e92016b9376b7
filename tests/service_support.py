"""Helpers for the service tests: a small flow, captured JSON logs, a real database outage,
and metric readings."""

from __future__ import annotations

import copy
import functools
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.harness import ROOT
from trt.observability.logs import configure_logging, logging_restored
from trt.observability.metrics import REGISTRY

# A flow of our own, so these tests do not follow the product's menus as they change; its
# system texts (the apology, "one moment") are the product's own.
_MINI = {
    "locales": ["ru", "en"],
    "fallback_locale": "en",
    "root": "main",
    "texts": {"done": {"ru": "Готово", "en": "Done"}},
    "actions": {"work": {"description": "test"}, "boom": {"description": "test"}},
    "states": {
        "main": {
            "text": {"ru": "Главное", "en": "Main"},
            "buttons": [
                [{"id": "next", "text": {"ru": "Дальше", "en": "Next"}, "to": "second"}],
                [{"id": "work", "text": {"ru": "Работа", "en": "Work"}, "action": "work"}],
                [{"id": "boom", "text": {"ru": "Сломать", "en": "Break"}, "action": "boom"}],
            ],
        },
        "second": {
            "text": {"ru": "Второй экран", "en": "Second screen"},
            "parent": "main",
        },
    },
}
MAIN_TEXT = "Главное"
SECOND_TEXT = "Второй экран"


# LibYAML when PyYAML has it: the pure-Python parser takes 0.1 s for flows.yaml, and
# these run at collection in every test worker and in every mini flow.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.cache
def _product_flow_section(name: str) -> dict[str, Any]:
    spec = yaml.load((ROOT / "flows.yaml").read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    return dict(spec[name])


def product_system_texts() -> dict[str, Any]:
    return copy.deepcopy(_product_flow_section("system"))


def product_texts() -> dict[str, Any]:
    """The real file's `texts:`: a flow run with the product's registry needs the texts
    the product shows (`trt flows check` refuses a file without them)."""
    return copy.deepcopy(_product_flow_section("texts"))


def mini_flow(directory: Path) -> Path:
    path = directory / "mini_flows.yaml"
    texts = {**product_texts(), **_MINI.get("texts", {})}
    flow = {**_MINI, "system": product_system_texts(), "texts": texts}
    dumped = yaml.dump(flow, Dumper=_YAML_DUMPER, allow_unicode=True, sort_keys=True)
    path.write_text(dumped, encoding="utf-8")
    return path


# ------------------------------------------------------------------ logs


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@contextmanager
def captured_logs(level: str = "INFO", secrets: list[str] | None = None) -> Iterator[Captured]:
    """The service's logging pipeline, as `trt serve` installs it, into a string."""
    stream = io.StringIO()
    # Restores what was there before (the error counter included), not just our handler.
    with logging_restored():
        configure_logging(level=level, json_lines=True, secrets=secrets or [], stream=stream)
        yield Captured(stream)


# ------------------------------------------------------------------ a database outage


class Outage:
    """Makes a real database unreachable and brings it back.

    PostgreSQL: the database stops accepting connections and its open ones are
    terminated, as when the server goes down. SQLite: the directory holding the file
    disappears and the pool's open connections are closed, so every new connection
    fails to open the file, as when a volume goes away.
    """

    def __init__(self, url: str, engine: AsyncEngine, admin: URL | None) -> None:
        self.url = make_url(url)
        self.engine = engine
        self.admin = admin
        self.active = False

    @property
    def _sqlite_dir(self) -> Path:
        assert self.url.database is not None
        return Path(self.url.database).parent

    async def _admin(self, sql: str) -> None:
        assert self.admin is not None
        engine = create_async_engine(self.admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                await connection.execute(text(sql))
        finally:
            await engine.dispose()

    async def start(self) -> None:
        self.active = True
        if self.url.get_backend_name() == "sqlite":
            os.rename(self._sqlite_dir, self._sqlite_dir.with_name(self._sqlite_dir.name + "-gone"))
            await self.engine.dispose()
            return
        name = self.url.database
        await self._admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await self._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )

    async def stop(self) -> None:
        """Idempotent, so a test's teardown can always call it."""
        if not self.active:
            return
        self.active = False
        if self.url.get_backend_name() == "sqlite":
            os.rename(self._sqlite_dir.with_name(self._sqlite_dir.name + "-gone"), self._sqlite_dir)
            return
        await self._admin(f'ALTER DATABASE "{self.url.database}" ALLOW_CONNECTIONS true')


# ------------------------------------------------------------------ metrics


def sample(name: str, **labels: str) -> float:
    """A sample's value now; 0 for a labelled series not created yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
