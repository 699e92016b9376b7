"""A fake KIE.ai that we own, spoken to over real HTTP by the real `KieClient`.

It makes tasks, moves them along as scripted (`kie.fake_script.Behaviour`), calls back like
KIE (optionally signed), and serves small real media it generates, so tests and `make run`
without KIE_API_KEY exercise the client's parsing, errors and retries, the callback endpoint
and delivery. Everything it saw is kept for assertions (`requests`, `tasks`, `callbacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web

from kie.fake_media import CONTENT_TYPES, media_kind, render
from kie.fake_script import MESSAGES, Behaviour, Script
from kie.fake_state import (
    CallbackDelivery,
    FakeTask,
    Fault,
    JSONDict,
    Request,
    now_ms,
)
from kie.signing import sign
from kie.task import FAIL, SUCCESS

__all__ = ["Behaviour", "CallbackDelivery", "FakeKie", "FakeTask", "Request"]

ENDPOINTS = {
    "/api/v1/jobs/createTask": "createTask",
    "/api/v1/jobs/recordInfo": "recordInfo",
    "/api/v1/chat/credit": "credit",
}
_T = TypeVar("_T")


class FakeKie:
    """KIE's side of our account, in memory, for one test or one `make run`."""

    def __init__(
        self,
        api_key: str = "fake-kie-key",
        *,
        credits: float = 10_000.0,
        hmac_key: str | None = None,
        default: Behaviour | None = None,
        http_status_mirrors_code: bool = False,
        callback_timeout_s: float = 15.0,
    ) -> None:
        """`http_status_mirrors_code` False answers errors under HTTP 200 with the code in the
        body (what makes clients that read only the status wrong); True uses it as status too.
        """
        self.api_key = api_key
        self.credits = credits
        self.hmac_key = hmac_key
        self.http_status_mirrors_code = http_status_mirrors_code
        self.callback_timeout_s = callback_timeout_s
        self.base_url = ""
        self.requests: list[Request] = []
        self.tasks: dict[str, FakeTask] = {}
        self.callbacks: list[CallbackDelivery] = []
        self.files: dict[str, bytes] = {}  # served at /files/<name>
        self._script = Script(default or Behaviour())
        self._faults: dict[str, list[Fault]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._tick = asyncio.Event()
        self._closed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ life

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Returns the base URL to give `KieClient`; a second call reuses it."""
        if self._runner is None:
            self._closed = asyncio.Event()
            app = web.Application()
            for path in ENDPOINTS:
                app.router.add_route("*", path, self._handle)
            app.router.add_get("/files/{name}", self._file)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, host, port).start()
            self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
            self._http = aiohttp.ClientSession()
        return self.base_url

    async def stop(self) -> None:
        """Ends pending timers, callbacks and hanging answers at once, then the server."""
        self._closed.set()
        for job in list(self._background):
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ scripting

    def script(
        self, behaviour: Behaviour, *, model: str | None = None, times: int | None = 1
    ) -> None:
        """Queues `behaviour` for the next `times` creates (of `model`, or of any model);
        `times=None` makes it standing: the model's, or everyone's new default."""
        self._script.add(behaviour, model=model, times=times)

    @property
    def script_pending(self) -> int:
        return self._script.pending()

    def set_behaviour(self, task_id: str, behaviour: Behaviour) -> None:
        """Changes how an existing, unfinished task ends (and calls back)."""
        self.tasks[task_id].behaviour = behaviour

    def inject(
        self,
        endpoint: str,
        code: int | None = None,
        *,
        delay_s: float = 0.0,
        times: int = 1,
        msg: str | None = None,
    ) -> None:
        """The next `times` requests to `endpoint` (createTask, recordInfo, credit) wait
        `delay_s`, then get `code` (None: their normal answer). A faulted create makes no task.
        """
        if endpoint not in ENDPOINTS.values():
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self._faults.setdefault(endpoint, []).extend([Fault(code, delay_s, msg)] * times)

    def complete(self, task_id: str) -> FakeTask:
        """Finishes a task now, as its behaviour says (success or fail), calling back."""
        task = self.tasks[task_id]
        self._finish(task)
        return task

    # ------------------------------------------------------------ reading

    def requests_of(self, endpoint: str) -> list[Request]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def tasks_for(self, model: str | None = None, prompt: str | None = None) -> list[FakeTask]:
        """Tasks in creation order, filtered: how a test counts tasks per job (S11)."""
        return [
            task
            for task in self.tasks.values()
            if (model is None or task.model == model) and (prompt is None or task.prompt == prompt)
        ]

    def callbacks_for(self, task_id: str) -> list[CallbackDelivery]:
        return [c for c in self.callbacks if c.task_id == task_id]

    async def wait_until(
        self,
        ready: Callable[[], _T | None],
        timeout: float = 5.0,  # noqa: ASYNC109 - one deadline for a condition, not one await
        what: str = "condition",
    ) -> _T:
        """`ready()`'s first truthy value, re-checked whenever anything happens here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tick = self._tick
            if value := ready():
                return value
            if (remaining := deadline - loop.time()) <= 0:
                raise TimeoutError(f"no {what} within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(remaining, 0.5))

    async def wait_for_request(
        self,
        endpoint: str | None = None,
        predicate: Callable[[Request], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        since: int = 0,
    ) -> Request:
        """The first request in `requests[since:]` to `endpoint` (None: any) that matches."""

        def match() -> Request | None:
            found = (r for r in self.requests[since:] if endpoint in (None, r.endpoint))
            return next((r for r in found if predicate is None or predicate(r)), None)

        return await self.wait_until(match, timeout, f"{endpoint or 'request'}")

    async def wait_for_task(
        self,
        predicate: Callable[[FakeTask], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> FakeTask:
        def match() -> FakeTask | None:
            return next((t for t in self.tasks.values() if not predicate or predicate(t)), None)

        return await self.wait_until(match, timeout, "task")

    async def wait_for_callbacks(
        self,
        task_id: str | None = None,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[CallbackDelivery]:
        """At least `count` deliveries (for `task_id`, or for any task), answered or not."""

        def match() -> list[CallbackDelivery] | None:
            found = [c for c in self.callbacks if task_id in (None, c.task_id)]
            return found if len(found) >= count else None

        return await self.wait_until(match, timeout, f"{count} callback(s)")

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = ENDPOINTS[request.path]
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._record(request, endpoint, body)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._answer(401)
        if faults := self._faults.get(endpoint):
            fault = faults.pop(0)
            await self._sleep(fault.delay_s)
            if fault.code is not None:
                return self._answer(fault.code, fault.msg)
        if endpoint == "createTask":
            return await self._create(request, body)
        if endpoint == "recordInfo":
            return self._record_info(request.query.get("taskId", ""))
        return self._answer(200, data=self.credits)

    async def _create(self, request: web.Request, body: Any) -> web.StreamResponse:
        if request.method != "POST":
            return self._answer(404, "Use POST")
        if not isinstance(body, dict):
            return self._answer(422, "The request body must be a JSON object")
        model, inputs, url = body.get("model"), body.get("input"), body.get("callBackUrl")
        if not isinstance(model, str) or not model.strip():
            return self._answer(422, "model is required and must be a string")
        if not isinstance(inputs, dict):
            return self._answer(422, "input is required and must be an object")
        if url is not None and not isinstance(url, str):
            return self._answer(422, "callBackUrl must be a string")
        behaviour = self._script.next_for(model)
        if behaviour.create_code is not None:
            return self._answer(behaviour.create_code)
        if self.credits < behaviour.cost:
            return self._answer(402)
        task = FakeTask(uuid.uuid4().hex, model, inputs, url or None, behaviour)
        self.tasks[task.task_id] = task
        if behaviour.run_s is not None:
            self._spawn(self._finish_later(task, behaviour.run_s))
        self._notify()
        if behaviour.create_drop and request.transport is not None:
            request.transport.abort()  # made, then lost: the client cannot know the taskId
            return web.Response()
        await self._sleep(behaviour.create_delay_s)
        return self._answer(200, data={"taskId": task.task_id})

    def _record_info(self, task_id: str) -> web.Response:
        task = self.tasks.get(task_id)
        if task is None:
            return self._answer(404, f"No task {task_id!r}")
        task.observe_poll()
        if task.polls >= task.behaviour.polls:
            self._finish(task)
        self._notify()
        return self._answer(200, data=task.data())

    async def _file(self, request: web.Request) -> web.Response:
        self._record(request, "files", None)
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound()
        kind = name.rpartition(".")[2]
        return web.Response(body=self.files[name], content_type=CONTENT_TYPES[kind])

    def _answer(self, code: int, msg: str | None = None, data: Any = None) -> web.Response:
        body = {"code": code, "msg": msg or MESSAGES.get(code, "success"), "data": data}
        status = code if self.http_status_mirrors_code and code != 200 else 200
        return web.json_response(body, status=status)

    # ------------------------------------------------------------ tasks

    def _finish(self, task: FakeTask) -> None:
        """Success (results made, credits taken) or fail, once; then the callback, if any."""
        if task.done:
            return
        behaviour = task.behaviour
        if behaviour.fail_code is not None:
            task.state = FAIL
        else:
            task.state = SUCCESS
            kind = behaviour.media or media_kind(task.model)
            for index in range(behaviour.results):
                name = f"{task.task_id}-{index}.{kind}"
                self.files[name] = render(kind, name)
                task.result_urls.append(f"{self.base_url}/files/{name}")
            task.consumed = behaviour.cost
            self.credits -= behaviour.cost
        task.complete_ms = task.update_ms = now_ms()
        if task.callback_url and behaviour.callback:
            self._spawn(self._call_back(task, task.callback_url, behaviour))
        self._notify()

    async def _finish_later(self, task: FakeTask, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._finish(task)

    async def _call_back(self, task: FakeTask, url: str, behaviour: Behaviour) -> None:
        await asyncio.sleep(behaviour.callback_delay_s)
        body = task.callback_body(self.credits)
        copies = max(1, behaviour.callback_copies)
        if behaviour.callback_parallel:
            await asyncio.gather(*(self._post(task, url, body) for _ in range(copies)))
            return
        for _ in range(copies):
            for retry in range(behaviour.callback_retries + 1):
                if retry:
                    await asyncio.sleep(behaviour.callback_retry_s)
                if await self._post(task, url, body):
                    break

    async def _post(self, task: FakeTask, url: str, body: JSONDict) -> bool:
        """One delivery; True when answered 2xx. Retried only as the behaviour says: code
        under test must not rely on retries (the poller backs callbacks up)."""
        headers = {"Content-Type": "application/json"}
        if self.hmac_key:
            timestamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = sign(task.task_id, timestamp, self.hmac_key)
        status: int | None = None
        error: str | None = None
        assert self._http is not None
        try:
            async with self._http.post(
                url,
                data=json.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.callback_timeout_s),
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.callbacks.append(
            CallbackDelivery(task.task_id, url, body, headers, status, error, time.monotonic())
        )
        self._notify()
        return status is not None and 200 <= status < 300

    # ------------------------------------------------------------ plumbing

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _sleep(self, seconds: float) -> None:
        """A delay that ends early when the server stops, so stop() never waits for it."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), seconds)

    def _record(self, request: web.Request, endpoint: str, body: Any) -> None:
        query, headers = dict(request.query), dict(request.headers)
        at = time.monotonic()
        self.requests.append(
            Request(request.method, request.path, endpoint, query, body, headers, at)
        )
        self._notify()

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()
