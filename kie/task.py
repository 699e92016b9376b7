"""A KIE task's state as one immutable value, read from recordInfo or from a callback.

Both carry the same `data` shape, so one parser serves both; `resultJson` arrives as a JSON
*string* and is decoded here, once, so callers never see KIE's double encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

WAITING, QUEUING, GENERATING = "waiting", "queuing", "generating"
SUCCESS, FAIL = "success", "fail"
STATES = (WAITING, QUEUING, GENERATING, SUCCESS, FAIL)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """`raw` keeps KIE's whole `data` for what this class does not name (param, model...)."""

    task_id: str
    state: str
    result_urls: list[str] = field(default_factory=list)
    fail_code: str | None = None
    fail_msg: str | None = None
    model: str | None = None
    create_time_ms: int | None = None
    complete_time_ms: int | None = None
    cost_time_ms: int | None = None
    consume_credits: float | None = None
    remained_credits: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in (SUCCESS, FAIL)

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCESS

    @property
    def failed(self) -> bool:
        return self.state == FAIL


def _result_urls(result_json: Any) -> list[str]:
    """Lenient: an empty or broken resultJson gives no URLs; a success without URLs is the
    caller's failure to handle, not a parse error that would hide the task's state."""
    if isinstance(result_json, str):
        try:
            result_json = json.loads(result_json) if result_json.strip() else {}
        except ValueError:
            return []
    if not isinstance(result_json, dict):
        return []
    urls = result_json.get("resultUrls")
    return [u for u in urls if isinstance(u, str) and u] if isinstance(urls, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def parse_task(data: Any) -> TaskInfo:
    """The `data` object of recordInfo or of a callback; ValueError when it is not one."""
    if not isinstance(data, dict):
        raise ValueError("task data is not an object")
    task_id, state = data.get("taskId"), data.get("state")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task data has no taskId")
    if not isinstance(state, str) or not state:
        raise ValueError("task data has no state")
    cost = _int(data.get("costTime"))
    created, completed = _int(data.get("createTime")), _int(data.get("completeTime"))
    if cost is None and created is not None and completed is not None:
        cost = completed - created
    return TaskInfo(
        task_id=task_id,
        state=state,
        result_urls=_result_urls(data.get("resultJson")),
        fail_code=_text(data.get("failCode")),
        fail_msg=_text(data.get("failMsg")),
        model=_text(data.get("model")),
        create_time_ms=created,
        complete_time_ms=completed,
        cost_time_ms=cost,
        consume_credits=_float(data.get("consumeCredits")),
        remained_credits=_float(data.get("remainedCredits")),
        raw=dict(data),
    )


def parse_callback(body: Any) -> TaskInfo:
    """A callback's whole JSON body (`{"code", "msg", "data"}`); ValueError when malformed.

    Anyone can POST to a callback URL: check its secret or signature, then confirm with
    recordInfo before charging or delivering.
    """
    if not isinstance(body, dict):
        raise ValueError("callback body is not an object")
    return parse_task(body.get("data"))
