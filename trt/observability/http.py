"""An aiohttp middleware for every request: metrics by route template, ids for callbacks.

Routes are labelled by their template (`/kie/callback/{job_id}/{secret}`), never by
the raw path, which would carry a job's callback secret into the metrics and give
Prometheus one series per job. A KIE callback names its job in the path, so the
job id is bound before the handler runs and every line of the callback has it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from trt.observability.context import scope
from trt.observability.metrics import HTTP_REQUESTS, HTTP_SECONDS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    started = time.perf_counter()
    status = 500
    with scope(http_route=route, job_id=request.match_info.get("job_id")):
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            HTTP_REQUESTS.labels(route, str(status)).inc()
            HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)
