"""KieClient against the fake KIE over real HTTP: parsing, error mapping, safe retries,
no second task for an unknown create (S11), rate spacing, callbacks and their signatures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kie.client import KieClient, TaskInfo, parse_callback, verify_signature
from kie.errors import (
    CreateOutcomeUnknown,
    FeatureDisabled,
    GenerationFailed,
    InsufficientCredits,
    KieError,
    Maintenance,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from kie.fake_server import Behaviour, FakeKie
from kie.task import parse_task

KEY = "kie-test-key-5f1c9a"
IMAGE = "google/nano-banana"
VIDEO = "bytedance/seedance-1.5-pro"


def fast(
    base_url: str,
    key: str = KEY,
    *,
    timeout_s: float = 2,
    attempts: int = 4,
    session: aiohttp.ClientSession | None = None,
) -> KieClient:
    """A client without the waits that real KIE needs: tiny back-off, no rate limit."""
    return KieClient(
        base_url,
        key,
        timeout_s=timeout_s,
        attempts=attempts,
        session=session,
        backoff_s=0.01,
        backoff_max_s=0.02,
        max_rps=1000,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeKie]:
    async with FakeKie(KEY) as server:
        yield server


@pytest.fixture
async def client(fake: FakeKie) -> AsyncIterator[KieClient]:
    async with fast(fake.base_url, timeout_s=2) as kie:
        yield kie


@dataclass
class Receiver:
    """Our side of KIE callbacks, as small as it gets: every POST, kept."""

    url: str = ""
    posts: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, count: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.posts) < count:
                await self.arrived.wait()
                self.arrived.clear()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()

    async def handle(request: web.Request) -> web.Response:
        got.posts.append((dict(request.headers), await request.json()))
        got.arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/kie/callback/{job}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/kie/callback/job-1"
    yield got
    await runner.cleanup()


# ---------------------------------------------------------------- success and parsing


async def test_success_after_polls(fake: FakeKie, client: KieClient) -> None:
    fake.script(Behaviour(polls=3, run_s=None))
    task_id = await client.create_task(IMAGE, {"prompt": "a red fox"}, "https://us/cb/1")

    states = [(await client.record_info(task_id)).state for _ in range(3)]
    info = await client.record_info(task_id)  # stays final

    assert states == ["waiting", "generating", "success"]
    assert info.done and info.succeeded and not info.failed
    assert info.task_id == task_id and info.model == IMAGE
    assert len(info.result_urls) == 1 and info.result_urls[0].startswith(fake.base_url)
    assert info.result_urls[0].endswith(".png")
    assert info.fail_code is None and info.fail_msg is None
    assert info.cost_time_ms is not None and info.cost_time_ms >= 0
    assert json.loads(info.raw["param"])["input"] == {"prompt": "a red fox"}
    create = fake.requests_of("createTask")[0]
    assert create.method == "POST" and create.headers["Authorization"] == f"Bearer {KEY}"
    assert create.body == {
        "model": IMAGE,
        "input": {"prompt": "a red fox"},
        "callBackUrl": "https://us/cb/1",
    }
    assert fake.requests_of("recordInfo")[0].query == {"taskId": task_id}


async def test_no_callback_url_is_left_out(fake: FakeKie, client: KieClient) -> None:
    await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert "callBackUrl" not in fake.requests_of("createTask")[0].body


async def test_several_results_parsed_from_the_result_json_string(
    fake: FakeKie, client: KieClient
) -> None:
    fake.script(Behaviour(polls=1, results=3))
    task_id = await client.create_task(VIDEO, {"prompt": "waves"}, None)
    info = await client.record_info(task_id)
    assert isinstance(info.raw["resultJson"], str)  # KIE's double encoding
    assert len(info.result_urls) == 3 and all(u.endswith(".mp4") for u in info.result_urls)


async def test_failed_task(fake: FakeKie, client: KieClient) -> None:
    fake.script(Behaviour(polls=2, run_s=None, fail_code="500", fail_msg="content policy"))
    task_id = await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert not (await client.record_info(task_id)).done
    info = await client.record_info(task_id)
    assert info.failed and info.done and not info.succeeded
    assert (info.fail_code, info.fail_msg, info.result_urls) == ("500", "content policy", [])


@pytest.mark.parametrize(
    ("result_json", "urls"),
    [
        (
            '{"resultUrls": ["https://a/1.png", "https://a/2.png"]}',
            ["https://a/1.png", "https://a/2.png"],
        ),
        ({"resultUrls": ["https://a/1.png"]}, ["https://a/1.png"]),
        ("", []),
        (None, []),
        ("{not json", []),
        ('{"resultUrls": "https://a/1.png"}', []),
        ('{"resultUrls": [null, "", "https://a/3.png"]}', ["https://a/3.png"]),
    ],
)
def test_result_json_shapes(result_json: Any, urls: list[str]) -> None:
    info = parse_task({"taskId": "t", "state": "success", "resultJson": result_json})
    assert info.result_urls == urls


@pytest.mark.parametrize("data", [None, [], {"state": "success"}, {"taskId": "t"}, {"taskId": 5}])
def test_malformed_task_data_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        parse_task(data)


async def test_credits_decrease_with_successes(fake: FakeKie, client: KieClient) -> None:
    assert await client.credits() == 10_000.0
    fake.script(Behaviour(polls=1, cost=12.5))
    await client.record_info(await client.create_task(IMAGE, {"prompt": "x"}, None))
    assert await client.credits() == 10_000.0 - 12.5


# ---------------------------------------------------------------- error mapping


ERRORS: list[tuple[int, type[KieError]]] = [
    (401, Unauthorized),
    (402, InsufficientCredits),
    (404, NotFound),
    (422, ValidationFailed),
    (429, RateLimited),
    (433, RateLimited),
    (455, Maintenance),
    (500, ServerError),
    (501, GenerationFailed),
    (505, FeatureDisabled),
    (451, KieError),
    (503, ServerError),
]


@pytest.mark.parametrize("mirror", [False, True], ids=["http200", "http-mirrors"])
@pytest.mark.parametrize(("code", "kind"), ERRORS, ids=[str(code) for code, _ in ERRORS])
async def test_codes_map_to_errors(
    fake: FakeKie, client: KieClient, code: int, kind: type[KieError], mirror: bool
) -> None:
    """Whether KIE sends the code only in the body or as the HTTP status too."""
    fake.http_status_mirrors_code = mirror
    fake.inject("createTask", code, times=10, msg="told by fake")
    with pytest.raises(KieError) as caught:
        await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert type(caught.value) is kind
    assert caught.value.code == code and "told by fake" in str(caught.value)
    tries = 4 if kind.retryable else 1
    assert len(fake.requests_of("createTask")) == tries
    assert not fake.tasks


async def test_unknown_task_is_not_found(client: KieClient) -> None:
    with pytest.raises(NotFound):
        await client.record_info("no-such-task")


async def test_validation_by_the_server(fake: FakeKie, client: KieClient) -> None:
    with pytest.raises(ValidationFailed, match="input"):
        await client.create_task(IMAGE, "not a dict", None)  # type: ignore[arg-type]
    assert not fake.tasks


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("code", [429, 433, 455, 500])
async def test_create_retried_after_safe_refusals(
    fake: FakeKie, client: KieClient, code: int
) -> None:
    fake.script(Behaviour(create_code=code), times=2)
    task_id = await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert len(fake.requests_of("createTask")) == 3
    assert list(fake.tasks) == [task_id]
    assert fake.script_pending == 0


async def test_retries_give_up_after_attempts(fake: FakeKie) -> None:
    fake.script(Behaviour(create_code=429), times=5)
    async with fast(fake.base_url, attempts=2) as kie:
        with pytest.raises(RateLimited):
            await kie.create_task(IMAGE, {"prompt": "x"}, None)
    assert len(fake.requests_of("createTask")) == 2


async def test_retry_backs_off_with_jitter(fake: FakeKie) -> None:
    fake.script(Behaviour(create_code=455), times=3)
    async with KieClient(fake.base_url, KEY, backoff_s=0.1, backoff_max_s=1, max_rps=1000) as kie:
        await kie.create_task(IMAGE, {"prompt": "x"}, None)
    at = [r.at for r in fake.requests_of("createTask")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Equal jitter: attempt n waits between half and all of 0.1 * 2**(n-1).
    for n, gap in enumerate(gaps, start=1):
        assert 0.05 * 2 ** (n - 1) - 0.01 <= gap <= 0.1 * 2 ** (n - 1) + 0.1


async def test_not_retried_when_refused_for_good(fake: FakeKie, client: KieClient) -> None:
    fake.script(Behaviour(create_code=402))
    with pytest.raises(InsufficientCredits):
        await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert len(fake.requests_of("createTask")) == 1


async def test_reads_retried_after_errors_and_timeouts(fake: FakeKie) -> None:
    fake.script(Behaviour(polls=1))
    async with fast(fake.base_url, timeout_s=0.3) as kie:
        task_id = await kie.create_task(IMAGE, {"prompt": "x"}, None)
        fake.inject("recordInfo", 500)
        fake.inject("recordInfo", delay_s=2.0)  # longer than the client waits
        fake.inject("recordInfo", 429)
        info = await kie.record_info(task_id)
        fake.inject("credit", delay_s=2.0)
        assert await kie.credits() == 10_000.0 - 4.0
    assert info.succeeded
    assert len(fake.requests_of("recordInfo")) == 4
    assert len(fake.requests_of("credit")) == 2


async def test_reads_that_keep_timing_out_are_unavailable(fake: FakeKie) -> None:
    fake.inject("credit", delay_s=2.0, times=2)
    async with fast(fake.base_url, timeout_s=0.2, attempts=2) as kie:
        with pytest.raises(Unavailable):
            await kie.credits()


# ---------------------------------------------------------------- S11: no second task


async def test_create_that_times_out_is_never_repeated(fake: FakeKie) -> None:
    fake.script(Behaviour(create_delay_s=3.0))
    async with fast(fake.base_url, timeout_s=0.3) as kie:
        with pytest.raises(CreateOutcomeUnknown) as caught:
            await kie.create_task(VIDEO, {"prompt": "one job"}, "https://us/cb/7")
        await asyncio.sleep(0.3)  # a retry, were there one, would have come by now
    assert not caught.value.retryable
    assert len(fake.requests_of("createTask")) == 1
    assert len(fake.tasks_for(model=VIDEO, prompt="one job")) == 1
    # The task exists and will call back to the job's URL: the caller's way to learn its id.
    assert fake.tasks_for()[0].callback_url == "https://us/cb/7"


async def test_create_whose_connection_drops_is_never_repeated(
    fake: FakeKie, client: KieClient
) -> None:
    fake.script(Behaviour(create_drop=True))
    with pytest.raises(CreateOutcomeUnknown):
        await client.create_task(VIDEO, {"prompt": "one job"}, None)
    assert len(fake.requests_of("createTask")) == 1
    assert len(fake.tasks_for(prompt="one job")) == 1


class _Retries(logging.Handler):
    """Sees the client's retry log, so a test can act between two attempts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


async def test_create_retried_when_nothing_could_be_sent() -> None:
    """Connection refused: the request never left, so repeating it is safe."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fake, retries, logger = FakeKie(KEY), _Retries(), logging.getLogger("kie.client")
    logger.addHandler(retries)
    logger.setLevel(logging.INFO)
    base = f"http://127.0.0.1:{port}"
    try:
        async with KieClient(base, KEY, backoff_s=0.3, backoff_max_s=1, max_rps=1000) as kie:
            creating = asyncio.create_task(kie.create_task(IMAGE, {"prompt": "x"}, None))
            await asyncio.wait_for(retries.seen.wait(), 5)  # refused; its retry is scheduled
            await fake.start(port=port)
            try:
                task_id = await creating
            finally:
                await fake.stop()
    finally:
        logger.removeHandler(retries)
        logger.setLevel(logging.NOTSET)
    assert len(retries.messages) == 1 and "cannot connect" in retries.messages[0]
    assert list(fake.tasks) == [task_id]
    assert len(fake.requests_of("createTask")) == 1


async def test_connection_refused_everywhere_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with fast(f"http://127.0.0.1:{port}", attempts=2) as kie:
        with pytest.raises(Unavailable) as caught:
            await kie.create_task(IMAGE, {"prompt": "x"}, None)
    assert type(caught.value) is Unavailable and caught.value.retryable


# ---------------------------------------------------------------- answers KIE never documented


async def _odd_server(answer: Callable[[web.Request], Awaitable[web.Response]]) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize(
    ("status", "text", "create_error", "tries"),
    [
        (200, "<html>hello</html>", CreateOutcomeUnknown, 1),  # answered, but with what?
        (200, '{"code": 200, "msg": "ok", "data": {}}', CreateOutcomeUnknown, 1),  # no taskId
        (502, "<html>Bad Gateway</html>", ServerError, 3),
        (404, "Not Found", NotFound, 1),
    ],
)
async def test_garbled_answers(
    status: int, text: str, create_error: type[KieError], tries: int
) -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=status, text=text)

    runner = await _odd_server(answer)
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with fast(base, attempts=3) as kie:
            with pytest.raises(KieError) as caught:
                await kie.create_task(IMAGE, {"prompt": "x"}, None)
            assert type(caught.value) is create_error
            assert len(seen) == tries
    finally:
        await runner.cleanup()


async def test_garbled_read_is_retried_then_unavailable() -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="<html>maintenance page</html>")

    runner = await _odd_server(answer)
    try:
        async with fast(f"http://127.0.0.1:{runner.addresses[0][1]}") as kie:
            with pytest.raises(Unavailable):
                await kie.record_info("t")
    finally:
        await runner.cleanup()
    assert len(seen) == 4


# ---------------------------------------------------------------- rate and keys


async def test_requests_are_spaced_to_ten_per_second(fake: FakeKie) -> None:
    """Measured where KIE would measure: arrival times at the server."""
    fake.script(Behaviour(polls=1))
    async with KieClient(fake.base_url, KEY) as kie:  # the default 10 per second
        task_id = await kie.create_task(IMAGE, {"prompt": "x"}, None)
        await asyncio.gather(*(kie.record_info(task_id) for _ in range(30)))
    at = sorted(r.at for r in fake.requests)
    assert len(at) == 31
    # No 11 requests inside any 0.9 s (10 per second, less a margin for network jitter).
    assert all(at[i + 10] - at[i] >= 0.9 for i in range(len(at) - 10))
    assert at[-1] - at[0] >= 2.7


async def test_one_limiter_spaces_retries_too(fake: FakeKie) -> None:
    fake.script(Behaviour(create_code=429), times=3)
    async with KieClient(fake.base_url, KEY, max_rps=5, backoff_s=0.001) as kie:
        await kie.create_task(IMAGE, {"prompt": "x"}, None)
    at = [r.at for r in fake.requests_of("createTask")]
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(at))


async def test_bad_key_is_unauthorized_and_never_shown(fake: FakeKie) -> None:
    wrong = "sk-wrong-key-4c0ffee"
    async with fast(fake.base_url, wrong) as kie:
        with pytest.raises(Unauthorized) as caught:
            await kie.create_task(IMAGE, {"prompt": "x"}, None)
        assert wrong not in repr(kie)
    shown = f"{caught.value} {caught.value!r} {caught.value.message}"
    assert wrong not in shown and KEY not in shown
    assert len(fake.requests_of("createTask")) == 1 and not fake.tasks


async def test_key_echoed_by_kie_is_masked(fake: FakeKie, client: KieClient) -> None:
    fake.inject("createTask", 422, msg=f"bad header Bearer {KEY}")
    with pytest.raises(ValidationFailed) as caught:
        await client.create_task(IMAGE, {"prompt": "x"}, None)
    assert KEY not in str(caught.value) and "***" in str(caught.value)


async def test_shared_session_is_left_open(fake: FakeKie) -> None:
    async with aiohttp.ClientSession() as session:
        async with fast(fake.base_url, session=session) as kie:
            await kie.credits()
        assert not session.closed


# ---------------------------------------------------------------- callbacks


async def test_callback_delivered_and_parsed(
    fake: FakeKie, client: KieClient, receiver: Receiver
) -> None:
    fake.script(Behaviour(polls=99, run_s=0.1))
    task_id = await client.create_task(VIDEO, {"prompt": "x"}, receiver.url)
    await receiver.wait(1)
    headers, body = receiver.posts[0]
    info = parse_callback(body)
    assert body["code"] == 200 and info.succeeded and info.task_id == task_id
    assert info.result_urls == (await client.record_info(task_id)).result_urls
    assert info.consume_credits == 4.0 and info.remained_credits == 10_000.0 - 4.0
    assert info.cost_time_ms is not None
    assert "X-Webhook-Signature" not in headers  # signing is opt-in
    assert [c.status for c in fake.callbacks_for(task_id)] == [200]


async def test_failure_callback(fake: FakeKie, client: KieClient, receiver: Receiver) -> None:
    fake.script(Behaviour(run_s=0.05, fail_code="400", fail_msg="bad prompt"))
    await client.create_task(IMAGE, {"prompt": "x"}, receiver.url)
    await receiver.wait(1)
    body = receiver.posts[0][1]
    info = parse_callback(body)
    assert body["code"] == 501 and info.failed
    assert (info.fail_code, info.fail_msg, info.result_urls) == ("400", "bad prompt", [])


@pytest.mark.parametrize("parallel", [False, True])
async def test_duplicate_callbacks(
    fake: FakeKie, client: KieClient, receiver: Receiver, parallel: bool
) -> None:
    fake.script(Behaviour(run_s=0.05, callback_copies=2, callback_parallel=parallel))
    task_id = await client.create_task(IMAGE, {"prompt": "x"}, receiver.url)
    await receiver.wait(2)
    await asyncio.sleep(0.1)
    assert len(receiver.posts) == 2
    assert receiver.posts[0][1] == receiver.posts[1][1]
    assert parse_callback(receiver.posts[1][1]).task_id == task_id


async def test_missing_callback(fake: FakeKie, client: KieClient, receiver: Receiver) -> None:
    fake.script(Behaviour(polls=1, callback=False))
    task_id = await client.create_task(IMAGE, {"prompt": "x"}, receiver.url)
    assert (await client.record_info(task_id)).succeeded  # only polling learns it
    await asyncio.sleep(0.2)
    assert receiver.posts == [] and fake.callbacks == []


async def test_slow_callback(fake: FakeKie, client: KieClient, receiver: Receiver) -> None:
    fake.script(Behaviour(polls=1, run_s=None, callback_delay_s=0.4))
    task_id = await client.create_task(IMAGE, {"prompt": "x"}, receiver.url)
    assert (await client.record_info(task_id)).succeeded
    done_at = time.monotonic()
    await asyncio.sleep(0.2)
    assert receiver.posts == []
    await receiver.wait(1)
    assert time.monotonic() - done_at >= 0.35


async def test_signed_callbacks_verify(receiver: Receiver) -> None:
    async with FakeKie(KEY, hmac_key="whk-secret") as fake:
        fake.script(Behaviour(run_s=0.05))
        async with fast(fake.base_url) as kie:
            task_id = await kie.create_task(IMAGE, {"prompt": "x"}, receiver.url)
            await receiver.wait(1)
    headers, body = receiver.posts[0]
    stamp, signature = headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"]
    assert parse_callback(body).task_id == task_id
    assert verify_signature(task_id, stamp, signature, "whk-secret")
    assert not verify_signature(task_id, stamp, signature, "other-key")
    assert not verify_signature("another-task", stamp, signature, "whk-secret")
    assert not verify_signature(task_id, stamp, signature, "whk-secret", now=int(stamp) + 301)


# ---------------------------------------------------------------- signatures, offline


def _signature(task_id: str, stamp: str, key: str) -> str:
    digest = hmac.new(key.encode(), f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_verify_signature_good() -> None:
    now = 1_760_000_000
    good = _signature("task-1", str(now), "k")
    assert verify_signature("task-1", str(now), good, "k", now=now)
    assert verify_signature(
        "task-1", str(now - 299), _signature("task-1", str(now - 299), "k"), "k", now=now
    )


@pytest.mark.parametrize(
    ("task_id", "stamp", "signature", "key"),
    [
        ("task-1", "1760000000", "AAAA", "k"),  # wrong signature
        ("task-1", "1760000000", _signature("task-1", "1760000000", "x"), "k"),  # other key
        ("task-1", "1759999000", _signature("task-1", "1759999000", "k"), "k"),  # too old
        ("task-1", "1760001000", _signature("task-1", "1760001000", "k"), "k"),  # from the future
        ("task-1", "soon", _signature("task-1", "soon", "k"), "k"),  # not a timestamp
        ("task-1", "", "", "k"),  # unsigned
        ("", "1760000000", _signature("", "1760000000", "k"), "k"),
        ("task-1", "1760000000", _signature("task-1", "1760000000", "k"), ""),  # no key set
        ("task-1", "1760000000", "ünïcødé", "k"),
    ],
)
def test_verify_signature_rejects(task_id: str, stamp: str, signature: str, key: str) -> None:
    assert not verify_signature(task_id, stamp, signature, key, now=1_760_000_000)


@pytest.mark.parametrize(
    "body", [None, [], {"code": 200}, {"data": "x"}, {"data": {"state": "success"}}]
)
def test_malformed_callbacks_are_value_errors(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_callback(body)


def test_task_info_is_frozen() -> None:
    info = TaskInfo("t", "success")
    with pytest.raises(AttributeError):
        info.state = "fail"  # type: ignore[misc]
