"""The fake Telegram and the fake KIE, with a way to strike at one precise call.

Why subclasses and not hooks in the fakes themselves: the fakes belong to the suite and
are being edited by others; everything the campaign needs is layered on their public
HTTP behaviour (plus `FakeBotAPI._handle`/`FakeKie._handle`, the one entry point of each
server), so nothing in product code or in the fakes had to change.

A `Strike` is armed with a predicate over one incoming request. The first request that
matches fires it, once:

- "fail" strikes make that very request fail the way the real service does (a 5xx, a
  429 with retry_after, the connection cut before the call is performed, or the call
  performed and then the connection cut so its answer is lost);
- "after" strikes run an action (kill the process, drop or refuse the database) once
  the call was performed and recorded, before its answer goes back: the service dies
  or loses its database not knowing whether the call worked, the worst moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from engine.local.bot_api_server import FakeBotAPI
from kie.fake_script import Behaviour, Script
from kie.fake_server import CallbackDelivery, FakeKie

Params = dict[str, Any]
Predicate = Callable[[str, Params], bool]
Action = Callable[[], Awaitable[None]]

# How a Telegram call can fail, as the real Bot API does.
TG_FAILURES = ("tg_5xx", "tg_cut", "tg_timeout", "tg_429")
# How a KIE request can fail.
KIE_FAILURES = ("kie_cut", "kie_timeout")
# Longer than KieClient's 30 s total timeout, which `trt serve` cannot shorten.
KIE_TIMEOUT_DELAY_S = 31.0


@dataclass
class Strike:
    """One armed fault: `failure` for the call itself, or `action` right after it."""

    predicate: Predicate
    failure: str | None = None
    action: Action | None = None
    fired: asyncio.Event = field(default_factory=asyncio.Event)
    what: str = ""  # the call that fired it, for the report

    def matches(self, method: str, params: Params) -> bool:
        return not self.fired.is_set() and self.predicate(method, params)


class _Armory:
    """The strikes of one fake; the first match wins and is spent."""

    def __init__(self) -> None:
        self.strikes: list[Strike] = []

    def arm(self, strike: Strike) -> Strike:
        self.strikes.append(strike)
        return strike

    def disarm(self) -> None:
        self.strikes.clear()

    def take(self, method: str, params: Params) -> Strike | None:
        for strike in self.strikes:
            if strike.matches(method, params):
                strike.fired.set()
                strike.what = method
                return strike
        return None


def _canonical(name: str) -> str:
    from engine.local import bot_api_server

    return bot_api_server._CANONICAL.get(name.lower(), name)


class FaultyTelegram(FakeBotAPI):
    """FakeBotAPI whose calls can be failed or followed by an action, one call at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.armory = _Armory()

    def arm(self, strike: Strike) -> Strike:
        return self.armory.arm(strike)

    async def _handle(self, request: web.Request) -> web.Response:
        from engine.local.bot_api_server import _read_params

        method = _canonical(request.match_info["method"])
        # Read (and so cache) the body first: from here to the base handler's own read
        # nothing awaits, so a failure queued below is taken by this very request.
        params, _ = await _read_params(request)
        strike = self.armory.take(method, params)
        if strike is None:
            return await super()._handle(request)
        if strike.failure == "tg_5xx":
            self.inject_error(method, 502, "Bad Gateway")
        elif strike.failure == "tg_429":
            self.inject_error(method, 429, "Too Many Requests: retry after 1", retry_after=1)
        elif strike.failure == "tg_cut":
            self.inject_disconnect(method)
        response = await super()._handle(request)
        if strike.failure == "tg_timeout" and request.transport is not None:
            # Performed and recorded, then the answer is lost: what a client timeout means.
            request.transport.abort()
        if strike.action is not None:
            await strike.action()
        return response


class _PromptScript(Script):
    """Behaviours chosen by the task's prompt, so each run scripts its own tasks whatever
    other runs' leftover jobs create meanwhile."""

    def __init__(self, default: Behaviour) -> None:
        super().__init__(default)
        self.default = default
        self.by_prompt: dict[str, Behaviour] = {}
        self.prompt: str | None = None

    def next_for(self, model: str) -> Behaviour:
        if self.prompt is not None and self.prompt in self.by_prompt:
            return self.by_prompt[self.prompt]
        return super().next_for(model)


class FaultyKie(FakeKie):
    """FakeKie whose requests and callbacks can be struck, and whose behaviours follow
    the prompt (`behave`)."""

    def __init__(self, default: Behaviour) -> None:
        super().__init__(default=default)
        self._script = _PromptScript(default)
        self.armory = _Armory()

    def arm(self, strike: Strike) -> Strike:
        return self.armory.arm(strike)

    def behave(self, prompt: str, behaviour: Behaviour) -> None:
        """Every task created for `prompt` behaves so."""
        script = self._script
        assert isinstance(script, _PromptScript)
        script.by_prompt[prompt] = behaviour

    def task_of(self, prompt: str) -> str | None:
        """The id of the (first) task made for `prompt`."""
        found = self.tasks_for(prompt=prompt)
        return found[0].task_id if found else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = {
            "/api/v1/jobs/createTask": "createTask",
            "/api/v1/jobs/recordInfo": "recordInfo",
        }.get(request.path, "other")
        await request.read()  # cached: the base handler reads it again without waiting
        params: Params = dict(request.query)
        if endpoint == "createTask":
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict) and isinstance(body.get("input"), dict):
                    params["prompt"] = body["input"].get("prompt")
        strike = self.armory.take(endpoint, params)
        if strike is not None and strike.action is not None:
            await strike.action()
        if strike is not None and strike.failure in KIE_FAILURES and endpoint == "createTask":
            # The task is made at once; its answer is cut, or comes after the client gave up.
            prompt = str(params.get("prompt"))
            script = self._script
            assert isinstance(script, _PromptScript)
            base = script.by_prompt.get(prompt) or script.default
            if strike.failure == "kie_cut":
                script.by_prompt[prompt] = replace(base, create_drop=True)
            else:
                script.by_prompt[prompt] = replace(base, create_delay_s=KIE_TIMEOUT_DELAY_S)
        if strike is not None and strike.failure == "kie_cut" and endpoint != "createTask":
            assert request.transport is not None
            request.transport.abort()  # a read: nothing happened, the answer never comes
            return web.Response()
        if strike is not None and strike.failure == "kie_timeout" and endpoint != "createTask":
            self.inject(endpoint, delay_s=KIE_TIMEOUT_DELAY_S)
        return await super()._handle(request)

    async def _create(self, request: web.Request, body: Any) -> web.StreamResponse:
        script = self._script
        assert isinstance(script, _PromptScript)
        inputs = body.get("input") if isinstance(body, dict) else None
        script.prompt = inputs.get("prompt") if isinstance(inputs, dict) else None
        return await super()._create(request, body)

    async def _post(self, task: Any, url: str, body: dict[str, Any]) -> bool:
        """A callback: strikes on "callback" fire just before KIE sends it."""
        strike = self.armory.take("callback", {"prompt": task.prompt, "task_id": task.task_id})
        if strike is not None and strike.action is not None:
            await strike.action()
        if strike is not None and strike.failure == "kie_cut":
            # Lost on the way: unanswered, so KIE tries again as the behaviour says.
            lost = CallbackDelivery(task.task_id, url, body, {}, None, "lost", time.monotonic())
            self.callbacks.append(lost)
            return False
        return await super()._post(task, url, body)
