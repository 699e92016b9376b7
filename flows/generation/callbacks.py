"""`POST /kie/callback/{job_id}/{secret}`: KIE telling us a task moved.

The per-job secret in the URL is checked first; KIE's optional HMAC headers
next (when a key is configured they are required). Even then the body is
only a hint: the service confirms it with recordInfo before anything is
delivered or charged, so a forged callback changes nothing (S10).

No authentication stands before the body is parsed, so a body that is not a callback
(too large, nested too deep, not a JSON object, not UTF-8) gets a 4xx and one log line,
never a traceback. With the database down the answer is 503, so KIE sends the callback
again (the poller would catch up anyway), with one warning instead of a traceback.
"""

from __future__ import annotations

import logging

from aiohttp import web

from engine.json_body import BodyRefused, read_json_object
from flows.generation.service import GenerationService
from kie.signing import verify_signature
from kie.task import parse_callback
from storage.errors import is_unavailable

log = logging.getLogger(__name__)

CALLBACK_PATH = "/kie/callback/{job_id}/{secret}"
MAX_BODY_BYTES = 256 * 1024


def add_kie_callbacks(app: web.Application, service: GenerationService) -> None:
    async def handle(request: web.Request) -> web.Response:
        try:
            info = parse_callback(await read_json_object(request, MAX_BODY_BYTES))
        except BodyRefused as exc:
            log.info("KIE callback refused: %s", exc.reason)
            error = "too large" if exc.status == 413 else "malformed"
            return web.json_response({"ok": False, "error": error}, status=exc.status)
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
        try:
            accepted = await service.on_callback(
                request.match_info["job_id"], request.match_info["secret"], info
            )
        except Exception as exc:
            if not is_unavailable(exc):
                raise  # a bug of ours: aiohttp logs it with its traceback and answers 500
            log.warning(
                "KIE callback not processed, the database is unavailable (%s); KIE will send "
                "it again",
                type(exc).__name__,
            )
            return web.json_response({"ok": False, "error": "try again"}, status=503)
        if not accepted:
            return web.json_response({"ok": False, "error": "unknown"}, status=404)
        return web.json_response({"ok": True})

    app.router.add_post(CALLBACK_PATH, handle)
