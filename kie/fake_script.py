"""What the fake KIE does with each create: one `Behaviour`, picked from a script.

Tests queue behaviours for the next creates (all models or one), or set a standing one;
`make run` just uses the default, a success after a moment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MESSAGES = {
    401: "You do not have access permissions",
    402: "The current credits are insufficient. Please top up.",
    404: "Task not found",
    422: "Validation error",
    429: "Too many requests, rate limited",
    433: "Sub-key usage exceeds the limit",
    455: "Service is under maintenance",
    500: "Server error",
    501: "Generation failed",
    505: "This feature is disabled",
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one create and the task it makes go. The defaults: a success, with a callback.

    A task finishes at its `polls`-th recordInfo or `run_s` after its create, whichever comes
    first (`run_s=None`: polls only). Before that polls show `waiting`, then `generating`.
    """

    polls: int = 3
    run_s: float | None = 1.0
    fail_code: str | None = None  # set: the task ends in state `fail` with this failCode
    fail_msg: str = "Generation failed (fake)"
    create_code: int | None = None  # answer the create with this KIE code; no task is made
    create_delay_s: float = 0.0  # the task is made at once, the answer comes this much later
    create_drop: bool = False  # the task is made, the connection is cut without an answer
    callback: bool = True  # False: never calls back, as when KIE's callback is lost
    callback_delay_s: float = 0.0
    callback_copies: int = 1  # more than 1: the same callback again (duplicates)
    callback_parallel: bool = False  # duplicates at the same moment instead of one by one
    # A callback that was not answered 2xx is sent again this many times, this far apart:
    # KIE documents "if 3 consecutive retries fail, the system will stop sending
    # callbacks" for several families, not the spacing; 0 keeps one delivery.
    callback_retries: int = 0
    callback_retry_s: float = 5.0
    media: str | None = None  # png, wav or mp4; None: guessed from the model id
    results: int = 1  # URLs in resultJson
    cost: float = 4.0  # credits taken from the balance on success


class Script:
    """Queued behaviours are used once each, the model's queue before the shared one; with
    both empty, the model's standing behaviour, else the default."""

    def __init__(self, default: Behaviour) -> None:
        self._queues: dict[str | None, deque[Behaviour]] = {}
        self._standing: dict[str | None, Behaviour] = {None: default}

    def add(self, behaviour: Behaviour, *, model: str | None = None, times: int | None = 1) -> None:
        """`times=None` makes it standing (for `model`, or the new default)."""
        if times is None:
            self._standing[model] = behaviour
            return
        self._queues.setdefault(model, deque()).extend([behaviour] * times)

    def next_for(self, model: str) -> Behaviour:
        for key in (model, None):
            if queue := self._queues.get(key):
                return queue.popleft()
        return self._standing.get(model) or self._standing[None]

    def pending(self) -> int:
        """Queued behaviours not used yet: a test can check its script was consumed."""
        return sum(len(queue) for queue in self._queues.values())
