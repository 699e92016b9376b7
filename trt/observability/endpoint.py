"""`GET /metrics`: the registry in Prometheus's text format, optionally behind a token."""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from trt.observability.database import DATABASE
from trt.observability.metrics import REGISTRY

METRICS_PATH = "/metrics"


def add_metrics_route(app: web.Application, db: AsyncEngine, token: str | None = None) -> None:
    expected = f"Bearer {token}".encode() if token else None

    async def metrics(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            return web.Response(status=401, text="unauthorized\n")
        await DATABASE.refresh(db)
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get(METRICS_PATH, metrics)
