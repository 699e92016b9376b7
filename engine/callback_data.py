"""Callback data: `VERSION:COUNTER:BUTTON[:VALUE]`, at most 64 bytes.

The flow version makes buttons from an older deploy recognisable; the
per-conversation counter makes buttons from an older screen recognisable.
Neither needs a server-side lookup table, so they survive restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BYTES = 64
COUNTER_DIGITS = 7
COUNTER_MODULUS = 36**COUNTER_DIGITS
BACK_ID = "<"
MAIN_ID = "^"
OPTION_ID = "#"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class Tap:
    version: str
    counter: int
    button: str
    value: str | None = None


def encode_counter(counter: int) -> str:
    n = counter % COUNTER_MODULUS
    if n == 0:
        return "0"
    out = []
    while n:
        n, digit = divmod(n, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))


def prefix(version: str, counter: int) -> str:
    """The part shared by every button of one screen, computed once per render."""
    return f"{version}:{encode_counter(counter)}:"


def decode(data: str | None) -> Tap | None:
    """The tap, or None when the data is not ours (malformed, foreign, too long)."""
    if not data or len(data.encode()) > MAX_BYTES:
        return None
    parts = data.split(":", 3)
    if len(parts) < 3:
        return None
    version, counter, button = parts[0], parts[1], parts[2]
    if not version or not button or not counter or len(counter) > COUNTER_DIGITS:
        return None
    try:
        number = int(counter, 36)
    except ValueError:
        return None
    value = parts[3] if len(parts) == 4 else None
    if (button == OPTION_ID) != (value is not None):
        return None
    return Tap(version, number, button, value)


def same_counter(tap: Tap, stored: int) -> bool:
    return bool(tap.counter == stored % COUNTER_MODULUS)


def longest(version_length: int, button_length: int, value_length: int = 0) -> int:
    """The longest callback data a screen can produce, for the static checker."""
    size = version_length + 1 + COUNTER_DIGITS + 1 + button_length
    return size + (1 + value_length if value_length else 0)
