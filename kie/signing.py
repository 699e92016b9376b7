"""KIE's opt-in callback signature: base64(HMAC-SHA256(taskId + "." + timestamp, key)).

Only the task id and the timestamp are signed, not the body, so a valid signature proves the
callback came from KIE about that task, recently; what it says must still be confirmed with
recordInfo before money moves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def sign(task_id: str, timestamp: str, hmac_key: str) -> str:
    """The X-Webhook-Signature KIE would send; the fake server signs with it too."""
    message = f"{task_id}.{timestamp}".encode()
    digest = hmac.new(hmac_key.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    task_id: str,
    timestamp: str,
    signature: str,
    hmac_key: str,
    *,
    now: float | None = None,
    window_s: int = 300,
) -> bool:
    """True only for a signature of this task at a timestamp within `window_s` of `now`.

    The window stops replays of an old, genuine callback; the comparison is constant-time so
    the signature cannot be guessed byte by byte. Never raises on junk input.
    """
    if not (task_id and timestamp and signature and hmac_key):
        return False
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > window_s:
        return False
    expected = sign(task_id, timestamp, hmac_key)
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
