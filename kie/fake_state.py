"""What the fake KIE remembers: requests, tasks and callback deliveries, as tests read them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from kie.fake_script import Behaviour
from kie.task import FAIL, GENERATING, SUCCESS, WAITING

JSONDict = dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as it arrived; `at` is time.monotonic(), for spacing checks."""

    method: str
    path: str
    endpoint: str  # createTask, recordInfo, credit or files
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    at: float


@dataclass(frozen=True, slots=True)
class CallbackDelivery:
    """One POST to a callBackUrl; `status` None when it got no answer (see `error`)."""

    task_id: str
    url: str
    body: JSONDict
    headers: dict[str, str]
    status: int | None
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected answer for one request to an endpoint: a delay, then a code or normal."""

    code: int | None
    delay_s: float
    msg: str | None


@dataclass(slots=True)
class FakeTask:
    task_id: str
    model: str
    input: JSONDict
    callback_url: str | None
    behaviour: Behaviour
    state: str = WAITING
    polls: int = 0
    result_urls: list[str] = field(default_factory=list)
    consumed: float = 0.0
    create_ms: int = field(default_factory=now_ms)
    update_ms: int = field(default_factory=now_ms)
    complete_ms: int | None = None

    @property
    def done(self) -> bool:
        return self.state in (SUCCESS, FAIL)

    @property
    def prompt(self) -> str | None:
        prompt = self.input.get("prompt")
        return prompt if isinstance(prompt, str) else None

    def observe_poll(self) -> None:
        """A poll that does not finish the task still shows it moving."""
        self.polls += 1
        if not self.done:
            self.state = WAITING if self.polls < 2 else GENERATING
            self.update_ms = now_ms()

    def data(self) -> JSONDict:
        """recordInfo's `data`, with resultJson as the JSON string KIE sends."""
        failed = self.state == FAIL
        result = json.dumps({"resultUrls": self.result_urls}) if self.state == SUCCESS else ""
        param = {"model": self.model, "callBackUrl": self.callback_url, "input": self.input}
        cost = None if self.complete_ms is None else self.complete_ms - self.create_ms
        return {
            "taskId": self.task_id,
            "model": self.model,
            "state": self.state,
            "param": json.dumps(param, ensure_ascii=False),
            "resultJson": result,
            "failCode": self.behaviour.fail_code if failed else "",
            "failMsg": self.behaviour.fail_msg if failed else "",
            "costTime": cost,
            "completeTime": self.complete_ms,
            "createTime": self.create_ms,
            "updateTime": self.update_ms,
        }

    def callback_body(self, remained: float) -> JSONDict:
        data = self.data() | {"consumeCredits": self.consumed, "remainedCredits": remained}
        if self.state == SUCCESS:
            return {"code": 200, "msg": "Playground task completed successfully.", "data": data}
        return {"code": 501, "msg": "Playground task failed.", "data": data}
