"""Small, real result files for the fake KIE: a PNG, a WAV, an MP4.

Real files, not placeholder bytes, so delivery code that probes, uploads or re-sends them meets
what it meets in production. Written with zlib and struct only; nothing to install.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import struct
import zlib

from kie.fake_mp4 import mp4

PNG, WAV, MP4 = "png", "wav", "mp4"
CONTENT_TYPES = {PNG: "image/png", WAV: "audio/wav", MP4: "video/mp4"}

# Model ids of the KIE catalog, by what they return; checked in this order.
_VIDEO_HINTS = (
    *("video", "veo", "kling", "hailuo", "sora", "wan/", "seedance", "runway"),
    *("avatar", "infinitalk"),  # talking heads, even when made from audio
)
_AUDIO_HINTS = ("suno", "audio", "speech", "sound", "music", "elevenlabs", "tts")
_SUNO_MODELS = ("V3_5", "V4", "V4_5", "V4_5PLUS", "V5", "V5_5")


def media_kind(model: str) -> str:
    """What a model returns, guessed from its id; `Behaviour.media` overrides it."""
    lowered = model.lower()
    if any(hint in lowered for hint in _VIDEO_HINTS):
        return MP4
    if model in _SUNO_MODELS or any(hint in lowered for hint in _AUDIO_HINTS):
        return WAV
    return PNG


def hue_of(seed: str) -> float:
    """A stable colour per task, so two results can be told apart at a glance."""
    return hashlib.sha256(seed.encode()).digest()[0] / 256


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 64, height: int = 64, hue: float = 0.0) -> bytes:
    """An 8-bit RGB PNG with a diagonal gradient in the given hue."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type None
        for x in range(width):
            value = 0.4 + 0.6 * (x + y) / max(1, width + height - 2)
            r, g, b = colorsys.hsv_to_rgb(hue, 0.7, value)
            rows += bytes((round(r * 255), round(g * 255), round(b * 255)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )


def wav(seconds: float = 1.0, rate: int = 8000, hue: float = 0.0) -> bytes:
    """A mono 16-bit PCM WAV: a sine tone between 220 and 880 Hz, faded in and out."""
    count = int(seconds * rate)
    frequency = 220 * 2 ** (2 * hue)
    fade = max(1, rate // 50)
    samples = []
    for i in range(count):
        envelope = min(1.0, i / fade, (count - 1 - i) / fade)
        samples.append(round(12000 * envelope * math.sin(2 * math.pi * frequency * i / rate)))
    data = struct.pack(f"<{count}h", *samples)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16-bit
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def render(kind: str, seed: str) -> bytes:
    """The file for a result of `kind`, coloured (or pitched) by `seed`."""
    hue = hue_of(seed)
    if kind == PNG:
        return png(hue=hue)
    if kind == WAV:
        return wav(hue=hue)
    if kind == MP4:
        return mp4(hue=hue)
    raise ValueError(f"unknown media kind {kind!r}")
