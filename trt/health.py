"""`/healthz` (the process answers) and `/readyz` (it can do its job right now).

Readiness checks what an update needs: the database answers, its schema is at
the migration this code expects, and the flows and prices are loaded; it is
also false while the process shuts down, so a load balancer stops sending
traffic before the listener closes. A 503 names the reasons, never a
connection string or an exception's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.migrate import head_revision, read_revision
from trt.observability.metrics import READY


class Readiness:
    def __init__(
        self,
        db: AsyncEngine,
        flows_loaded: Callable[[], bool],
        prices_loaded: Callable[[], bool],
        *,
        timeout_s: float = 2.0,
    ) -> None:
        self.db = db
        self.flows_loaded = flows_loaded
        self.prices_loaded = prices_loaded
        self.timeout_s = timeout_s
        self.draining = False
        self.head = head_revision()

    async def reasons(self) -> list[str]:
        """Why the service is not ready; empty when it is."""
        if self.draining:
            return ["shutting down"]
        reasons: list[str] = []
        try:
            current = await asyncio.wait_for(self._current_revision(), self.timeout_s)
        except Exception as exc:
            reasons.append(f"database unreachable ({type(exc).__name__})")
        else:
            if current != self.head:
                reasons.append(f"database at migration {current or 'none'}, needs {self.head}")
        if not self.flows_loaded():
            reasons.append("flows not loaded")
        if not self.prices_loaded():
            reasons.append("prices not loaded")
        return reasons

    async def _current_revision(self) -> str | None:
        # Read without Alembic, whose import costs a serving process start-up time.
        async with self.db.connect() as connection:
            return await read_revision(connection)


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reasons = await readiness.reasons()
        READY.set(0 if reasons else 1)
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
