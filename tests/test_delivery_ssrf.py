"""A result URL from KIE may point anywhere: we download only from the public internet.

Issue 11, item 11. When Telegram refuses a result by URL, delivery downloads the file
and uploads it. The URL comes from KIE's recordInfo, so without a guard it could make
the bot fetch 127.0.0.1, the cloud metadata address or a private network, and hand the
body to the user. These tests drive the real aiohttp client against real local servers
that count their hits: a refused fetch must never reach them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from engine.local.bot_api_server import FakeBotAPI
from flows.generation.delivery import deliver_result
from flows.generation.fetch_policy import FetchError, FetchPolicy, FetchRefused
from flows.generation.safe_fetch import RESULT_FETCH_TIMEOUT_S, ResultFetcher
from flows.generation.service import GRACE
from flows.generation.settings import GenerationSettings
from tests.conftest import in_ci
from trt.app import build_bot

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
CAP = 1000  # a small size cap, so oversize bodies stay small


class Spy:
    """A real HTTP server on `host` that records every request it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.hits: list[str] = []
        self.port = 0
        self._stall = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, port: int = 0) -> Spy:
        app = web.Application()
        app.router.add_get("/file.png", self._file)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/declared-big", self._declared_big)
        app.router.add_get("/streamed-big", self._streamed_big)
        app.router.add_get("/exact", self._exact)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._stall.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _hit(self, request: web.Request) -> None:
        self.hits.append(request.path_qs)

    async def _file(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=PNG, content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPFound(request.query["to"])

    async def _declared_big(self, request: web.Request) -> web.StreamResponse:
        """Announces more than the cap, sends a little, then stalls: only a client that
        believes Content-Length refuses at once; one that reads on waits for its timeout."""
        self._hit(request)
        response = web.StreamResponse(headers={"Content-Length": str(CAP * 50)})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await self._stall.wait()
        return response

    async def _streamed_big(self, request: web.Request) -> web.StreamResponse:
        """No Content-Length (chunked): the cap must hold while reading."""
        self._hit(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"y" * (CAP // 2))
        await response.write_eof()
        return response

    async def _exact(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=b"z" * CAP, content_type="application/octet-stream")


def need_address(host: str) -> None:
    """Skips where this machine cannot listen on `host`; in CI, fails instead: a skip
    there would hide a refused address never being tried."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        if in_ci():
            pytest.fail(f"CI must be able to listen on {host}: {exc}")
        pytest.skip(f"cannot listen on {host} here: {exc}")


@pytest.fixture
async def spy() -> AsyncIterator[Spy]:
    server = await Spy().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def other() -> AsyncIterator[Spy]:
    """A second server, not on any allow-list: where a redirect tries to go."""
    server = await Spy().start()
    try:
        yield server
    finally:
        await server.stop()


def strict(**options: Any) -> ResultFetcher:
    """Production's fetcher: nothing allowed besides the public internet."""
    return ResultFetcher(FetchPolicy(), max_bytes=CAP, timeout_s=5, **options)


def allowing(*entries: str, **options: Any) -> ResultFetcher:
    return ResultFetcher(FetchPolicy.from_entries(entries), max_bytes=CAP, timeout_s=5, **options)


# ------------------------------------------------------------------ addresses


async def test_loopback_is_refused_and_never_reached(spy: Spy) -> None:
    with pytest.raises(FetchRefused, match="loopback"):
        await strict().fetch(f"{spy.base}/file.png")
    assert spy.hits == []


async def test_a_name_that_resolves_to_loopback_is_refused(spy: Spy) -> None:
    with pytest.raises(FetchRefused):
        await strict().fetch(f"http://localhost:{spy.port}/file.png")
    assert spy.hits == []


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",  # unspecified: on Linux it reaches the local listener
        "2130706433",  # 127.0.0.1 as one number
        "127.1",  # 127.0.0.1, abbreviated
        "0x7f.0.0.1",  # 127.0.0.1 in hex, left to the resolver
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
        "[::ffff:7f00:1]",
    ],
)
async def test_disguised_loopback_is_refused_and_never_reached(spy: Spy, host: str) -> None:
    with pytest.raises(FetchRefused):
        await strict().fetch(f"http://{host}:{spy.port}/file.png")
    assert spy.hits == []


async def test_ipv6_loopback_is_refused_and_never_reached() -> None:
    need_address("::1")
    server = await Spy("::1").start()
    try:
        with pytest.raises(FetchRefused, match="loopback"):
            await strict().fetch(f"{server.base}/file.png")
        assert server.hits == []
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/x.png", "private"),
        ("http://172.16.0.1/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
        ("http://100.64.0.1/x.png", "not public"),  # carrier-grade NAT
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://240.0.0.1/x.png", "reserved"),
        ("http://[fc00::1]/x.png", "private"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[::]/x.png", "unspecified"),
        ("http://[ff02::1]/x.png", "multicast"),
        ("http://[::ffff:10.0.0.1]/x.png", "private"),
        ("http://[::ffff:169.254.169.254]/x.png", "link-local"),
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "link-local"),  # NAT64 of 169.254.169.254
        ("http://[2002:a00:1::]/x.png", "private"),  # 6to4 of 10.0.0.1
    ],
)
async def test_private_and_special_addresses_are_refused(url: str, why: str) -> None:
    with pytest.raises(FetchRefused, match=why):
        await strict().fetch(url)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/result.png",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.com/result.png",
        "http:///result.png",
        "not a url",
    ],
)
async def test_only_http_and_https_urls_are_fetched(url: str) -> None:
    with pytest.raises(FetchRefused):
        await strict().fetch(url)


def test_the_policy_judges_addresses_after_unwrapping_them() -> None:
    policy = FetchPolicy()
    for public in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert policy.refusal(public) is None, public
    for private in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "fd00::1", "::127.0.0.1"):
        assert policy.refusal(private) is not None, private
    allowed = FetchPolicy.from_entries(["10.0.0.0/8", "kie.local", "::1"])
    assert allowed.refusal("10.9.9.9") is None and allowed.refusal("::1") is None
    assert allowed.refusal("::ffff:10.1.1.1") is None
    assert allowed.refusal("11.0.0.1") is None  # public anyway
    assert allowed.refusal("192.168.0.1") is not None and allowed.refusal("127.0.0.1")
    assert allowed.host_allowed("KIE.local.") and not allowed.host_allowed("evil.kie.local")


# ------------------------------------------------------------------ the allow-list


async def test_an_allowed_address_is_fetched(spy: Spy) -> None:
    assert await allowing("127.0.0.1").fetch(f"{spy.base}/file.png") == PNG
    assert await allowing("127.0.0.0/8").fetch(f"{spy.base}/file.png") == PNG
    assert spy.hits == ["/file.png", "/file.png"]


async def test_an_allowed_name_is_fetched(spy: Spy) -> None:
    assert await allowing("localhost").fetch(f"http://localhost:{spy.port}/file.png") == PNG
    assert spy.hits == ["/file.png"]


async def test_the_allow_list_covers_only_what_it_names(spy: Spy) -> None:
    with pytest.raises(FetchRefused):
        await allowing("10.0.0.0/8", "kie.local").fetch(f"{spy.base}/file.png")
    with pytest.raises(FetchRefused):  # the name is allowed, not its address
        await allowing("localhost").fetch(f"{spy.base}/file.png")
    assert spy.hits == []


def test_the_allow_list_refuses_nonsense() -> None:
    for entry in ("", "http://127.0.0.1", "127.0.0.1:8080", "10.0.0.0/33", "a b", "*"):
        with pytest.raises(ValueError):
            FetchPolicy.from_entries([entry])


def test_the_allow_list_is_a_setting_empty_by_default() -> None:
    assert GenerationSettings(_env_file=None).result_fetch_allow == ()
    settings = GenerationSettings(RESULT_FETCH_ALLOW="127.0.0.1, 10.0.0.0/8,kie.local")
    assert settings.result_fetch_allow == ("127.0.0.1", "10.0.0.0/8", "kie.local")
    with pytest.raises(ValidationError):
        GenerationSettings(RESULT_FETCH_ALLOW="127.0.0.1:80")


# ------------------------------------------------------------------ redirects


async def test_a_redirect_to_a_server_not_on_the_list_is_refused(spy: Spy, other: Spy) -> None:
    """`localhost` is allowed by name; the redirect names 127.0.0.1, which is not."""
    url = f"http://localhost:{spy.port}/redirect?to={other.base}/file.png"
    with pytest.raises(FetchRefused, match="loopback"):
        await allowing("localhost").fetch(url)
    assert spy.hits and other.hits == []


async def test_a_redirect_to_another_loopback_address_is_refused(spy: Spy) -> None:
    """127.0.0.1 is allowed as an address; 127.0.0.2 is not."""
    need_address("127.0.0.2")
    target = await Spy("127.0.0.2").start()
    try:
        url = f"{spy.base}/redirect?to={target.base}/file.png"
        with pytest.raises(FetchRefused, match="loopback"):
            await allowing("127.0.0.1").fetch(url)
        assert len(spy.hits) == 1 and target.hits == []
    finally:
        await target.stop()


async def test_a_redirect_to_another_scheme_is_refused(spy: Spy) -> None:
    with pytest.raises(FetchRefused, match="scheme"):
        await allowing("127.0.0.1").fetch(f"{spy.base}/redirect?to=file:///etc/passwd")
    assert len(spy.hits) == 1


async def test_redirects_on_the_list_are_followed_a_few_times_only(spy: Spy) -> None:
    url = f"{spy.base}/file.png"
    for _ in range(2):
        url = f"{spy.base}/redirect?to={url}"
    assert await allowing("127.0.0.1", max_redirects=2).fetch(url) == PNG
    assert len(spy.hits) == 3
    spy.hits.clear()
    url = f"{spy.base}/redirect?to={url}"
    with pytest.raises(FetchRefused, match="redirect"):
        await allowing("127.0.0.1", max_redirects=2).fetch(url)
    assert len(spy.hits) == 3  # the third redirect is not followed


# ------------------------------------------------------------------ DNS


def fake_dns(
    answers: dict[str, list[list[str]]], asked: list[str]
) -> Callable[..., Awaitable[list[Any]]]:
    """getaddrinfo with scripted answers per name, one answer list per lookup in turn."""

    async def getaddrinfo(host: Any, port: Any, **_: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        asked.append(name)
        turns = answers[name]
        addresses = turns[min(len(asked) - 1, len(turns) - 1)]
        out: list[Any] = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, int(port), 0, 0) if ":" in address else (address, int(port))
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return getaddrinfo


async def test_every_address_of_a_name_is_checked(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    answers = {"mixed.example": [["8.8.8.8", "127.0.0.1"]]}
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_dns(answers, asked))
    with pytest.raises(FetchRefused, match="loopback"):
        await strict().fetch(f"http://mixed.example:{spy.port}/file.png")
    assert asked == ["mixed.example"] and spy.hits == []


async def test_a_name_is_resolved_once_and_connected_to_as_checked(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer passes the check, a second one would not. The
    connection must go to the checked address, never to a fresh lookup's."""
    need_address("127.0.0.2")
    target = await Spy("127.0.0.2").start(spy.port)  # same port: only the lookup differs
    try:
        asked: list[str] = []
        answers = {"rebind.example": [["127.0.0.1"], ["127.0.0.2"]]}
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_dns(answers, asked))
        body = await allowing("127.0.0.1").fetch(f"http://rebind.example:{spy.port}/file.png")
        assert body == PNG and spy.hits == ["/file.png"] and target.hits == []
        assert asked == ["rebind.example"]
    finally:
        await target.stop()


# ------------------------------------------------------------------ size and time


async def test_a_declared_oversize_body_is_refused_before_reading_it(spy: Spy) -> None:
    with pytest.raises(FetchRefused, match="Content-Length"):
        await allowing("127.0.0.1").fetch(f"{spy.base}/declared-big")


async def test_a_streamed_oversize_body_is_refused(spy: Spy) -> None:
    with pytest.raises(FetchRefused, match="more than"):
        await allowing("127.0.0.1").fetch(f"{spy.base}/streamed-big")


async def test_a_body_of_exactly_the_cap_is_fetched(spy: Spy) -> None:
    assert await allowing("127.0.0.1").fetch(f"{spy.base}/exact") == b"z" * CAP


async def test_a_stalled_download_ends_in_time(spy: Spy) -> None:
    fetcher = ResultFetcher(
        FetchPolicy.from_entries(["127.0.0.1"]), max_bytes=CAP * 100, timeout_s=0.5
    )
    with pytest.raises(FetchError) as caught:
        await asyncio.wait_for(fetcher.fetch(f"{spy.base}/declared-big"), 5)
    assert not isinstance(caught.value, FetchRefused)


def test_the_download_gives_up_before_the_job_grace_period() -> None:
    assert 0 < RESULT_FETCH_TIMEOUT_S < GRACE.total_seconds()
    assert ResultFetcher().timeout_s == RESULT_FETCH_TIMEOUT_S


# ------------------------------------------------------------------ delivery


@pytest.fixture
async def telegram() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as api:
        yield api


LINK = "Your result: {url}"


async def test_delivery_sends_a_link_instead_of_fetching_loopback(
    spy: Spy, telegram: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram refuses the URL; the download is refused too; the user gets the link."""
    telegram.inject_error("sendPhoto", 400, "Bad Request: wrong file identifier/HTTP URL")
    bot = build_bot("42:TEST", telegram.base_url)
    url = f"{spy.base}/file.png"
    caplog.set_level(logging.INFO, logger="flows.generation")
    try:
        how = await deliver_result(bot, 7, "text_to_image", [url], "caption", LINK)
    finally:
        await bot.session.close()
    assert how == "link"
    assert spy.hits == [], "the bot fetched a loopback URL"
    assert [c.params.get("text") for c in telegram.calls_of("sendMessage")] == [
        LINK.format(url=url)
    ]
    assert not any(c.files for c in telegram.calls_of("sendPhoto")), "nothing is uploaded"
    said = [r.getMessage() for r in caplog.records]
    refused = [r for r in caplog.records if "refused" in r.getMessage() and "download" in r.msg]
    assert len(refused) == 1 and refused[0].exc_info is None, said
    assert [r for r in caplog.records if r.exc_info] == []


async def test_delivery_uploads_from_an_allowed_host(spy: Spy, telegram: FakeBotAPI) -> None:
    telegram.inject_error("sendPhoto", 400, "Bad Request: wrong file identifier/HTTP URL")
    bot = build_bot("42:TEST", telegram.base_url)
    try:
        how = await deliver_result(
            bot,
            7,
            "text_to_image",
            [f"{spy.base}/file.png"],
            "caption",
            LINK,
            fetcher=allowing("127.0.0.1"),
        )
    finally:
        await bot.session.close()
    assert how == "upload" and spy.hits == ["/file.png"]
    uploads = [c.files for c in telegram.calls_of("sendPhoto") if c.files]
    assert len(uploads) == 1 and next(iter(uploads[0].values())).data == PNG
