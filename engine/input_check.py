"""Checks a message against an input step and turns it into a storable value.

Limits are checked before anything is stored, so a huge text or a wrong file
type never reaches an action or the database.
"""

from __future__ import annotations

from typing import Any

from aiogram.types import Message

from engine.spec import Input

_MB = 1024 * 1024


class InputRejected(ValueError):
    """The message does not fit the step; the user sees the step's error text."""


def read_input(spec: Input, message: Message) -> str | dict[str, Any]:
    if message.text is not None and not message.text.startswith("/"):
        if "text" not in spec.accept:
            raise InputRejected("text not accepted")
        text = message.text.strip()
        if not spec.min_length <= len(text) <= spec.max_length:
            raise InputRejected(f"length {len(text)} outside {spec.min_length}..{spec.max_length}")
        return text
    media = _media(message)
    if media is None:
        raise InputRejected("unsupported message")
    kind, file_id, unique_id, size, mime = media
    if kind not in spec.accept:
        raise InputRejected(f"{kind} not accepted")
    if size is not None and size > spec.max_size_mb * _MB:
        raise InputRejected(f"file of {size} bytes is too large")
    if spec.mime_types and mime is not None and mime not in spec.mime_types:
        raise InputRejected(f"type {mime} not accepted")
    if spec.mime_types and mime is None and kind in ("document", "audio", "video"):
        raise InputRejected("file type unknown")
    value: dict[str, Any] = {"kind": kind, "file_id": file_id, "file_unique_id": unique_id}
    if size is not None:
        value["size"] = size
    if mime is not None:
        value["mime_type"] = mime
    if message.caption:
        value["caption"] = message.caption[: spec.max_length]
    return value


def _media(message: Message) -> tuple[str, str, str, int | None, str | None] | None:
    if message.photo:
        best = message.photo[-1]
        return "photo", best.file_id, best.file_unique_id, best.file_size, "image/jpeg"
    if message.video:
        v = message.video
        return "video", v.file_id, v.file_unique_id, v.file_size, v.mime_type
    if message.audio:
        a = message.audio
        return "audio", a.file_id, a.file_unique_id, a.file_size, a.mime_type
    if message.voice:
        vo = message.voice
        return "audio", vo.file_id, vo.file_unique_id, vo.file_size, vo.mime_type
    if message.document:
        d = message.document
        return "document", d.file_id, d.file_unique_id, d.file_size, d.mime_type
    return None
