"""An aiohttp client for KIE's generic ("market") API: createTask, recordInfo, credit.

It checks the body's `code` (KIE answers many failures under HTTP 200), maps codes to the
classes in `kie.errors`, spaces requests to stay under KIE's per-key rate, and retries only
what is safe to repeat. A createTask that may have reached KIE is never repeated here: that
would be a second task, billed twice, for one job (MONEY.md S11).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiolimiter import AsyncLimiter

from kie.errors import (
    CreateOutcomeUnknown,
    KieError,
    NotFound,
    ServerError,
    Unavailable,
    error_for,
)
from kie.signing import verify_signature
from kie.task import TaskInfo, parse_callback, parse_task

__all__ = ["KieClient", "TaskInfo", "parse_callback", "verify_signature"]

log = logging.getLogger(__name__)

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
CREDIT_PATH = "/api/v1/chat/credit"
_MAX_MESSAGE = 300


class _MaybeSent(Exception):
    """The request may have been processed but we have no usable answer (timeout, dropped
    connection, garbled 200): a read can be retried, a create cannot."""


class KieClient:
    """One per API key and event loop; `session` lets several clients share connections."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30,
        max_rps: float = 10,
        attempts: int = 4,
        session: aiohttp.ClientSession | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 10.0,
    ) -> None:
        if max_rps <= 0 or attempts < 1 or timeout_s <= 0:
            raise ValueError("max_rps and timeout_s must be positive, attempts at least 1")
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        # sock_connect below total: a connect that times out never sent the request, so it
        # surfaces as ConnectionTimeoutError (safe to retry), not as a total timeout.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10, timeout_s / 2))
        # Capacity 1 refilled every 1/max_rps s: evenly spaced, never a burst above the rate.
        self._limiter = AsyncLimiter(1, 1 / max_rps)
        self._attempts = attempts
        self._backoff_s, self._backoff_max_s = backoff_s, backoff_max_s
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:  # never the key
        return f"KieClient({self._base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the session only if this client made it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ API

    async def create_task(self, model: str, input: dict[str, Any], callback_url: str | None) -> str:
        """Starts a generation and returns its taskId.

        Raises CreateOutcomeUnknown when the request may have reached KIE without an answer;
        other KieErrors mean no task was created.
        """
        body: dict[str, Any] = {"model": model, "input": input}
        if callback_url:
            body["callBackUrl"] = callback_url
        data = await self._call("POST", CREATE_PATH, body=body, idempotent=False)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise CreateOutcomeUnknown("createTask answered success without a taskId")
        return task_id

    async def record_info(self, task_id: str) -> TaskInfo:
        """The task as KIE sees it now: the authority before charging or delivering."""
        data = await self._call("GET", RECORD_PATH, params={"taskId": task_id}, idempotent=True)
        if data is None:
            raise NotFound(f"no task {task_id}")
        try:
            return parse_task(data)
        except ValueError as exc:
            raise ServerError(f"malformed recordInfo answer: {exc}") from None

    async def credits(self) -> float:
        """Our account's KIE credit balance (1 credit = 0.005 USD)."""
        data = await self._call("GET", CREDIT_PATH, idempotent=True)
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            raise ServerError("malformed credit answer")
        try:
            return float(data)
        except ValueError:
            raise ServerError("malformed credit answer") from None

    # ------------------------------------------------------------ transport

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool,
    ) -> Any:
        """`data` of a code-200 answer, retrying only failures that cannot duplicate work."""
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._once(method, path, params, body)
            except _MaybeSent as exc:
                if not idempotent:
                    raise CreateOutcomeUnknown(f"{path}: {exc}; the task may exist") from None
                error: KieError = Unavailable(f"{path}: {exc}")
            except KieError as exc:
                if not exc.retryable:
                    raise
                error = exc
            if attempt == self._attempts:
                raise error
            delay = self._backoff(attempt)
            log.info("KIE %s failed (%s); retry %d in %.2fs", path, error, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter, so clients that failed together do not retry together."""
        ceiling = min(self._backoff_max_s, self._backoff_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _once(
        self, method: str, path: str, params: dict[str, str] | None, body: dict[str, Any] | None
    ) -> Any:
        await self._limiter.acquire()
        try:
            async with self._session_now().request(
                method,
                self._base_url + path,
                params=params,
                json=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            # Raised before a connection existed: nothing was sent.
            raise Unavailable(f"cannot connect to KIE ({type(exc).__name__})") from exc
        except aiohttp.InvalidURL:
            raise KieError(f"invalid KIE URL {self._base_url + path!r}") from None
        except TimeoutError:
            raise _MaybeSent("timed out waiting for KIE") from None
        except aiohttp.ClientError as exc:
            raise _MaybeSent(f"connection lost ({type(exc).__name__})") from exc
        return self._data(status, raw)

    def _data(self, status: int, raw: bytes) -> Any:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        if not isinstance(code, int) or isinstance(code, bool):
            if status == 200:
                raise _MaybeSent("HTTP 200 without a KIE answer")
            raise error_for(status, f"HTTP {status} without a KIE answer")
        if code != 200:
            assert isinstance(body, dict)
            raise error_for(code, self._clean(body.get("msg")))
        assert isinstance(body, dict)
        return body.get("data")

    def _clean(self, message: Any) -> str:
        """KIE's message, short, and without our key should anything ever echo it."""
        text = str(message or "no message")[:_MAX_MESSAGE]
        return text.replace(self._api_key, "***") if self._api_key else text
