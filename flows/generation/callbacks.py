"""`POST /kie/callback/{job_id}/{secret}`: KIE telling us a task moved.

The per-job secret in the URL is checked first; KIE's optional HMAC headers
next (when a key is configured they are required). Even then the body is
only a hint: the service confirms it with recordInfo before anything is
delivered or charged, so a forged callback changes nothing (S10).
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from flows.generation.service import GenerationService
from kie.signing import verify_signature
from kie.task import parse_callback

log = logging.getLogger(__name__)

CALLBACK_PATH = "/kie/callback/{job_id}/{secret}"
MAX_BODY_BYTES = 256 * 1024


def add_kie_callbacks(app: web.Application, service: GenerationService) -> None:
    async def handle(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.json_response({"ok": False, "error": "too large"}, status=413)
        try:
            body = json.loads(await request.content.read(MAX_BODY_BYTES))
            info = parse_callback(body)
        except (ValueError, KeyError, TypeError) as exc:
            log.info("malformed KIE callback: %s", exc)
            return web.json_response({"ok": False, "error": "malformed"}, status=400)
        key = service.settings.kie_callback_hmac_key
        if key is not None and not verify_signature(
            info.task_id,
            request.headers.get("X-Webhook-Timestamp", ""),
            request.headers.get("X-Webhook-Signature", ""),
            key,
        ):
            return web.json_response({"ok": False, "error": "bad signature"}, status=401)
        accepted = await service.on_callback(
            request.match_info["job_id"], request.match_info["secret"], info
        )
        if not accepted:
            return web.json_response({"ok": False, "error": "unknown"}, status=404)
        return web.json_response({"ok": True})

    app.router.add_post(CALLBACK_PATH, handle)
