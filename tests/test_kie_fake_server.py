"""The fake KIE itself, spoken to with plain aiohttp: auth, validation, scripting, task life,
credits, callbacks, and the media it generates (checked as real PNG, WAV and MP4 files)."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kie.fake_media import MP4, PNG, WAV, media_kind, png, wav
from kie.fake_mp4 import mp4
from kie.fake_server import Behaviour, FakeKie

KEY = "fake-server-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeKie]:
    async with FakeKie(KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _call(
    http: aiohttp.ClientSession,
    fake: FakeKie,
    endpoint: str,
    *,
    body: Any = None,
    task_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    paths = {"create": "/api/v1/jobs/createTask", "record": "/api/v1/jobs/recordInfo"}
    paths["credit"] = "/api/v1/chat/credit"
    method = "POST" if endpoint == "create" else "GET"
    params = {"taskId": task_id} if task_id is not None else None
    async with http.request(
        method,
        fake.base_url + paths[endpoint],
        json=body,
        params=params,
        headers=AUTH if headers is None else headers,
    ) as response:
        return response.status, await response.json()


async def _create(http: aiohttp.ClientSession, fake: FakeKie, model: str = "z-image") -> str:
    status, answer = await _call(http, fake, "create", body={"model": model, "input": {}})
    assert (status, answer["code"]) == (200, 200), answer
    task_id: str = answer["data"]["taskId"]
    return task_id


# ---------------------------------------------------------------- HTTP surface


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}])
async def test_bearer_key_required(
    fake: FakeKie, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for endpoint in ("create", "record", "credit"):
        body = {"model": "m", "input": {}}
        status, answer = await _call(http, fake, endpoint, body=body, headers=headers)
        assert (status, answer["code"]) == (200, 401)  # in the body, as KIE does
    assert not fake.tasks and len(fake.requests) == 3


async def test_http_status_can_mirror_the_code(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    fake.http_status_mirrors_code = True
    status, answer = await _call(http, fake, "credit", headers={})
    assert (status, answer["code"]) == (401, 401)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"input": {}},
        {"model": 5, "input": {}},
        {"model": " ", "input": {}},
        {"model": "m"},
        {"model": "m", "input": "prompt"},
        {"model": "m", "input": {}, "callBackUrl": 7},
    ],
)
async def test_create_validates(fake: FakeKie, http: aiohttp.ClientSession, body: Any) -> None:
    _status, answer = await _call(http, fake, "create", body=body)
    assert answer["code"] == 422 and answer["msg"]
    assert not fake.tasks


async def test_requests_are_recorded(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    task_id = await _create(http, fake)
    await _call(http, fake, "record", task_id=task_id)
    first, second = fake.requests
    assert (first.method, first.endpoint, first.body) == (
        "POST",
        "createTask",
        {"model": "z-image", "input": {}},
    )
    assert (second.endpoint, second.query) == ("recordInfo", {"taskId": task_id})
    assert first.headers["Authorization"] == f"Bearer {KEY}" and first.at <= second.at
    assert (await fake.wait_for_request("recordInfo")).query["taskId"] == task_id
    with pytest.raises(TimeoutError):
        await fake.wait_for_request("recordInfo", since=2, timeout=0.05)


# ---------------------------------------------------------------- task life


async def test_states_move_over_polls(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    fake.script(Behaviour(polls=4, run_s=None))
    task_id = await _create(http, fake)
    states = []
    for _ in range(5):
        _, answer = await _call(http, fake, "record", task_id=task_id)
        states.append(answer["data"]["state"])
    assert states == ["waiting", "generating", "generating", "success", "success"]
    data = answer["data"]
    assert data["taskId"] == task_id and data["model"] == "z-image"
    assert isinstance(data["resultJson"], str) and isinstance(data["param"], str)
    assert data["completeTime"] >= data["createTime"]


async def test_task_finishes_on_time_without_polls(
    fake: FakeKie, http: aiohttp.ClientSession
) -> None:
    fake.script(Behaviour(polls=100, run_s=0.1))
    task_id = await _create(http, fake)
    task = await fake.wait_for_task(lambda t: t.done, timeout=2)
    assert task.task_id == task_id and task.state == "success" and task.polls == 0


async def test_script_order(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    """The model's queue, then the shared queue, then the model's standing, then default."""
    fake.script(Behaviour(create_code=455), model="video-model")
    fake.script(Behaviour(create_code=429), times=2)
    fake.script(Behaviour(create_code=402), model="image-model", times=None)
    codes = []
    for model in ("video-model", "image-model", "video-model", "video-model", "image-model"):
        _, answer = await _call(http, fake, "create", body={"model": model, "input": {}})
        codes.append(answer["code"])
    assert codes == [455, 429, 429, 200, 402]
    assert fake.script_pending == 0 and len(fake.tasks_for(model="video-model")) == 1


async def test_standing_default_and_set_behaviour(
    fake: FakeKie, http: aiohttp.ClientSession
) -> None:
    fake.script(Behaviour(polls=1, fail_code="422", fail_msg="bad"), times=None)
    failing = await _create(http, fake)
    rescued = await _create(http, fake)
    fake.set_behaviour(rescued, Behaviour(polls=1))
    _, first = await _call(http, fake, "record", task_id=failing)
    _, second = await _call(http, fake, "record", task_id=rescued)
    assert (first["data"]["state"], first["data"]["failCode"]) == ("fail", "422")
    assert second["data"]["state"] == "success"


async def test_count_tasks_per_model_and_prompt(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    for prompt in ("cat", "cat", "dog"):
        await _call(http, fake, "create", body={"model": "m", "input": {"prompt": prompt}})
    assert len(fake.tasks_for(model="m", prompt="cat")) == 2
    assert len(fake.tasks_for(prompt="dog")) == 1 and fake.tasks_for(model="other") == []


async def test_unknown_task(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    _, answer = await _call(http, fake, "record", task_id="nope")
    assert answer["code"] == 404


async def test_credits_run_out(http: aiohttp.ClientSession) -> None:
    async with FakeKie(KEY, credits=10.0) as fake:
        fake.script(Behaviour(polls=1, cost=6.0), times=None)
        task_id = await _create(http, fake)
        await _call(http, fake, "record", task_id=task_id)
        _, balance = await _call(http, fake, "credit")
        _, refused = await _call(http, fake, "create", body={"model": "m", "input": {}})
    assert balance["data"] == 4.0 and refused["code"] == 402 and len(fake.tasks) == 1


async def test_failed_task_costs_nothing(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    fake.script(Behaviour(polls=1, fail_code="500"))
    task_id = await _create(http, fake)
    fake.complete(task_id)
    assert fake.credits == 10_000.0 and fake.tasks[task_id].result_urls == []


async def test_injected_faults(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    fake.inject("credit", 500, times=2)
    fake.inject("createTask", 429)
    codes = [(await _call(http, fake, "credit"))[1]["code"] for _ in range(3)]
    _, refused = await _call(http, fake, "create", body={"model": "m", "input": {}})
    assert codes == [500, 500, 200] and refused["code"] == 429 and not fake.tasks
    with pytest.raises(ValueError):
        fake.inject("nowhere", 500)


async def test_stop_does_not_wait_for_hanging_answers(http: aiohttp.ClientSession) -> None:
    fake = FakeKie(KEY)
    await fake.start()
    fake.script(Behaviour(create_delay_s=30))
    hanging = asyncio.create_task(_call(http, fake, "create", body={"model": "m", "input": {}}))
    await fake.wait_for_task()  # made before the answer, as a naive retry would find out
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 5
    hanging.cancel()
    await asyncio.gather(hanging, return_exceptions=True)


# ---------------------------------------------------------------- callbacks


async def test_callback_to_nowhere_is_recorded(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    fake.script(Behaviour(polls=1))
    body = {"model": "m", "input": {}, "callBackUrl": "http://127.0.0.1:9/cb"}
    _, answer = await _call(http, fake, "create", body=body)
    task_id = answer["data"]["taskId"]
    fake.complete(task_id)
    (delivery,) = await fake.wait_for_callbacks(task_id)
    assert delivery.status is None and delivery.error
    assert delivery.body["data"]["taskId"] == task_id and delivery.body["code"] == 200


@pytest.mark.parametrize(("retries", "refusals", "sent"), [(0, 2, 1), (3, 2, 3), (3, 9, 4)])
async def test_a_refused_callback_is_retried_as_scripted(
    fake: FakeKie, http: aiohttp.ClientSession, retries: int, refusals: int, sent: int
) -> None:
    """KIE sends a refused callback again, at most `retries` times, and stops at a 2xx."""
    seen: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append(len(seen))
        return web.Response(status=503 if len(seen) <= refusals else 200)

    app = web.Application()
    app.router.add_post("/cb", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        fake.script(Behaviour(polls=1, callback_retries=retries, callback_retry_s=0.01))
        body = {"model": "m", "input": {}, "callBackUrl": f"http://127.0.0.1:{port}/cb"}
        _, answer = await _call(http, fake, "create", body=body)
        task_id = answer["data"]["taskId"]
        fake.complete(task_id)
        deliveries = await fake.wait_for_callbacks(task_id, sent)
        await asyncio.sleep(0.1)  # a further retry would come by now
        assert [d.status for d in fake.callbacks_for(task_id)] == [
            503 if i < refusals else 200 for i in range(sent)
        ]
        assert len(deliveries) == sent == len(seen)
    finally:
        await runner.cleanup()


async def test_complete_is_idempotent(fake: FakeKie, http: aiohttp.ClientSession) -> None:
    task_id = await _create(http, fake)
    fake.complete(task_id)
    urls = list(fake.tasks[task_id].result_urls)
    fake.complete(task_id)
    assert fake.tasks[task_id].result_urls == urls and fake.credits == 10_000.0 - 4.0


# ---------------------------------------------------------------- media


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_png_is_valid() -> None:
    chunks = _png_chunks(png(width=40, height=30, hue=0.3))
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (width, height, depth, colour, compression, filtering, interlace) == (
        40,
        30,
        8,
        2,
        0,
        0,
        0,
    )
    pixels = zlib.decompress(chunks[1][1])
    assert len(pixels) == height * (1 + 3 * width)
    assert all(pixels[row * (1 + 3 * width)] == 0 for row in range(height))  # filter bytes


def test_wav_is_valid() -> None:
    data = wav(seconds=0.5, rate=8000)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert data[12:16] == b"fmt " and struct.unpack("<I", data[16:20])[0] == 16
    audio, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[20:36])
    assert (audio, channels, rate, byte_rate, align, bits) == (1, 1, 8000, 16000, 2, 16)
    assert data[36:40] == b"data" and struct.unpack("<I", data[40:44])[0] == 8000
    samples = struct.unpack("<4000h", data[44:])
    assert max(samples) > 5000 and min(samples) < -5000  # a tone, not silence


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, tuple[int, int]]:
    """Top-level boxes of a region: type -> (payload start, payload end)."""
    found, pos, end = {}, start, len(data) if end is None else end
    while pos < end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8 and pos + size <= end, kind
        found[kind] = (pos + 8, pos + size)
        pos += size
    assert pos == end
    return found


def _path(data: bytes, *kinds: bytes) -> tuple[int, int]:
    start, end = 0, len(data)
    for kind in kinds:
        start, end = _boxes(data, start, end)[kind]
        start += {b"stsd": 8}.get(kind, 0)  # a full box with an entry count before its children
    return start, end


def test_mp4_is_valid() -> None:
    data = mp4(width=64, height=32, frames=5, fps=5)
    top = _boxes(data)
    assert list(top) == [b"ftyp", b"moov", b"mdat"]
    assert data[top[b"ftyp"][0] : top[b"ftyp"][0] + 4] == b"isom"
    stbl = _path(data, b"moov", b"trak", b"mdia", b"minf", b"stbl")
    tables = _boxes(data, *stbl)
    assert {b"stsd", b"stts", b"stsc", b"stsz", b"stco"} <= set(tables)
    hdlr = _path(data, b"moov", b"trak", b"mdia", b"hdlr")
    assert data[hdlr[0] + 8 : hdlr[0] + 12] == b"vide"
    # The sample entry: avc1 of 64x32, carrying an avcC with one SPS (NAL 7) and one PPS (8).
    avc1_start, avc1_end = _boxes(data, tables[b"stsd"][0] + 8, tables[b"stsd"][1])[b"avc1"]
    assert struct.unpack(">HH", data[avc1_start + 24 : avc1_start + 28]) == (64, 32)
    avcc_start, _ = _boxes(data, avc1_start + 78, avc1_end)[b"avcC"]
    avcc = data[avcc_start:]
    assert avcc[0] == 1 and avcc[1] == 66 and avcc[4] == 0xFF and avcc[5] == 0xE1
    sps_len = struct.unpack(">H", avcc[6:8])[0]
    assert avcc[8] & 0x1F == 7 and avcc[8 + sps_len] == 1 and avcc[11 + sps_len] & 0x1F == 8
    # Samples: stsz sizes add up to mdat, stco points at its start, each one IDR slice.
    stsz = data[tables[b"stsz"][0] : tables[b"stsz"][1]]
    count = struct.unpack(">I", stsz[8:12])[0]
    sizes = struct.unpack(f">{count}I", stsz[12:])
    (offset,) = struct.unpack(">I", data[tables[b"stco"][1] - 4 : tables[b"stco"][1]])
    mdat_start, mdat_end = top[b"mdat"]
    assert count == 5 and offset == mdat_start and sum(sizes) == mdat_end - mdat_start
    pos = offset
    for size in sizes:
        (nal_len,) = struct.unpack(">I", data[pos : pos + 4])
        assert nal_len == size - 4 and data[pos + 4] == 0x65  # nal_ref_idc 3, IDR slice
        assert b"\x00\x00\x01" not in data[pos + 4 : pos + size]  # no start code inside
        pos += size
    stts = data[tables[b"stts"][0] : tables[b"stts"][1]]
    assert struct.unpack(">III", stts[4:16]) == (1, 5, 200)  # 5 samples of 200 ms


def test_mp4_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError):
        mp4(width=50)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("google/nano-banana", PNG),
        ("seedream/4.5-edit", PNG),
        ("bytedance/seedance-1.5-pro", MP4),
        ("kling-2.6/image-to-video", MP4),
        ("veo3_fast", MP4),
        ("V4", WAV),
        ("elevenlabs/text-to-speech-turbo-2-5", WAV),
    ],
)
def test_media_kind_by_model(model: str, kind: str) -> None:
    assert media_kind(model) == kind


@pytest.mark.parametrize(
    ("model", "media", "content_type", "magic"),
    [
        ("z-image", None, "image/png", b"\x89PNG"),
        ("wan/2-6-text-to-video", None, "video/mp4", b"ftyp"),
        ("suno-ish", WAV, "audio/wav", b"RIFF"),
    ],
)
async def test_results_are_served(
    fake: FakeKie,
    http: aiohttp.ClientSession,
    model: str,
    media: str | None,
    content_type: str,
    magic: bytes,
) -> None:
    fake.script(Behaviour(polls=1, media=media))
    task_id = await _create(http, fake, model)
    (url,) = fake.complete(task_id).result_urls
    async with http.get(url) as response:
        assert response.status == 200 and response.content_type == content_type
        data = await response.read()
    assert magic in data[:8] and len(data) > 500
    async with http.get(fake.base_url + "/files/missing.png") as response:
        assert response.status == 404
    assert [r.endpoint for r in fake.requests][-2:] == ["files", "files"]
