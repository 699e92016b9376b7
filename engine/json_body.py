"""A JSON object from an HTTP request body, read so that no body can crash the handler.

For endpoints anyone can reach (Telegram's webhook, KIE's callbacks), where
`json.loads(await request.read())` is not enough:

- nesting a few thousand deep makes `json.loads` raise RecursionError, which is no
  ValueError: the handler's `except ValueError` missed it and the answer was a 500 with a
  traceback, one per request. Nesting just under that limit would fail later instead, in
  whatever walks the value (pydantic, the logs, the database driver); so the depth is
  limited far below it. Telegram and KIE nest a dozen levels at most;
- an integer beyond 64 bits parses fine, then fails at the database long after the answer
  was decided. Telegram's ids are at most 52 bits and KIE sends counts and timestamps:
  such an integer is never theirs;
- `json.loads(bytes)` also guesses UTF-16 and UTF-32; a body must be UTF-8, and so must
  what its escapes spell (no lone surrogates). NaN and Infinity are not JSON and cannot be
  stored as JSON either;
- a Content-Length is only a claim (a chunked body has none): the size cap holds on the
  bytes received.

Each refusal is a `BodyRefused` with the status to answer (400, or 413 when too large) and
a short reason for the caller's one log line: bad input never needs a traceback.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class BodyRefused(Exception):
    """The body is not what the endpoint accepts; `status` is the answer to give."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_capped(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, or BodyRefused(413) as soon as it is known to exceed `max_bytes`."""
    too_large = BodyRefused(413, f"body larger than {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = bytearray()
    # read(n) returns what has arrived, up to n bytes: one call may not be the whole body.
    while chunk := await request.content.read(max_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _int64(digits: str) -> int:
    if len(digits) > 20:  # before int(), which is slow on long digit strings
        raise ValueError("integer beyond 64 bits")
    value = int(digits)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("integer beyond 64 bits")
    return value


def _finite(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _check_tree(value: dict[str, Any], max_depth: int) -> None:
    """Depth, and strings that UTF-8 can carry: `"\\ud800"` is valid JSON, yet a lone
    surrogate fails wherever the string is written out (the database, the logs).

    Without recursion, so that the check itself cannot overflow the stack.
    """
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > max_depth:
            raise BodyRefused(400, f"JSON nested deeper than {max_depth}")
        children: list[Any] = [*item, *item.values()] if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
            elif isinstance(child, str) and not child.isascii():
                try:
                    child.encode("utf-8")
                except UnicodeEncodeError:
                    raise BodyRefused(400, "JSON string with a lone surrogate") from None


def parse_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, or BodyRefused(400) saying what is wrong with them."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused(400, "body is not UTF-8") from None
    try:
        value = json.loads(text, parse_int=_int64, parse_float=_finite, parse_constant=_not_json)
    except RecursionError:
        raise BodyRefused(400, "JSON nested too deep") from None
    except ValueError as exc:
        # The message of JSONDecodeError and ours names a position, never the input.
        raise BodyRefused(400, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BodyRefused(400, f"JSON {type(value).__name__} where an object was expected")
    _check_tree(value, max_depth)
    return value


async def read_json_object(
    request: web.Request, max_bytes: int, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """The request's body as a JSON object; BodyRefused (413 or 400) for anything else."""
    return parse_object(await read_capped(request, max_bytes), max_depth)
