"""Downloading a result file KIE named, without letting its URL reach into our network.

Why: when Telegram refuses a result by URL, delivery downloads the file and uploads
it to the user's chat. The URL comes from KIE's recordInfo, which we do not control,
so an unguarded download is a server-side request forgery: a URL naming 127.0.0.1,
the cloud metadata address (169.254.169.254) or a private network would make the bot
fetch it and hand the body to the user.

The rules, for every URL including each redirect's target:

- only http and https;
- the host's addresses must all be on the public internet: loopback, private,
  link-local, multicast, reserved, unspecified and otherwise non-global addresses
  are refused, IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4)
  are judged by that IPv4 address too;
- names are resolved once, by our resolver inside the connector, which checks every
  address before aiohttp may use any: the connection goes to an address that was
  checked, so a name that answers differently a moment later (DNS rebinding) gains
  nothing. Address literals never reach a resolver and are checked before the request;
- redirects are followed by hand, a few at most, each target checked like the first;
- the body stops at a size cap (a larger Content-Length is refused before reading),
  and the whole download at a time limit shorter than a job's grace period.

Local runs and tests fetch from a fake KIE on 127.0.0.1: an explicit allow-list
(RESULT_FETCH_ALLOW, empty in production) names the hosts or networks that may be
fetched although they are not public. A host allowed by name is trusted whatever it
resolves to; an allowed network covers its addresses whatever name led there.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from flows.generation.fetch_policy import FetchError, FetchPolicy, FetchRefused

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # Telegram's upload limit for bots
# Seconds a whole download may take, redirects included. A job in delivery is left alone
# for GRACE (60 s, flows.generation.service) before the poller steps in; this stays well
# inside it, leaving time for the upload and the link after a slow or stalled download.
RESULT_FETCH_TIMEOUT_S = 30.0
# Redirects followed per download; result files are normally served directly.
MAX_REDIRECTS = 3

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class _AddressRefused(OSError):
    """Raised by the resolver; aiohttp wraps OSErrors from resolving in ClientConnectorError."""


class _GuardedResolver(AbstractResolver):
    """Resolves a name once and refuses it unless every address passes the policy, so
    the connector only ever connects to addresses that were checked."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.host_allowed(host):
            return results
        for result in results:
            if (why := self._policy.refusal(result["host"])) is not None:
                raise _AddressRefused(f"{host} resolves to {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class ResultFetcher:
    """Downloads one result file under a FetchPolicy (see the module's docstring).

    `fetch` returns the body or raises FetchError; FetchRefused when the policy said no.
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        max_bytes: int = MAX_UPLOAD_BYTES,
        timeout_s: float = RESULT_FETCH_TIMEOUT_S,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects

    def __repr__(self) -> str:
        return f"ResultFetcher({self.policy!r}, max_bytes={self.max_bytes})"

    async def fetch(self, url: str) -> bytes:
        try:
            target = URL(url)
        except (ValueError, TypeError) as exc:
            raise FetchRefused(f"not a URL: {exc}") from None
        self.policy.check_url(target)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(target)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _AddressRefused):
                raise FetchRefused(str(exc.os_error)) from None
            raise FetchError(f"could not connect to {exc.host}: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout_s:g} s") from None

    async def _follow(self, target: URL) -> bytes:
        connector = aiohttp.TCPConnector(
            resolver=_GuardedResolver(self.policy), use_dns_cache=False
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as http:
            for _ in range(self.max_redirects + 1):
                async with http.get(target, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        target = self._redirect(target, response)
                        continue
                    if response.status != 200:
                        raise FetchError(f"{target.host} answered {response.status}")
                    return await self._body(target, response)
        raise FetchRefused(f"more than {self.max_redirects} redirects")

    def _redirect(self, current: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if not location:
            raise FetchError(f"{current.host} redirected nowhere")
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError):
            raise FetchRefused(f"{current.host} redirected to a malformed URL") from None
        self.policy.check_url(target)
        return target

    async def _body(self, target: URL, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_bytes:
            raise FetchRefused(
                f"{target.host} declares Content-Length {declared} > {self.max_bytes}"
            )
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchRefused(f"{target.host} sent more than {self.max_bytes} bytes")
        return bytes(body)
