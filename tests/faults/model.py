"""The campaign's vocabulary: effect points, faults, runs and what a run found.

An effect point is a place in a journey where a fault can hit: named by what has just
happened there (a Bot API call Telegram performed, a request KIE received, a write the
database is about to take). A fault is injected at the first moment the point is
reached after the journey arms it; one fault per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.faults.fakes import KIE_FAILURES, TG_FAILURES

# Every fault, in the table's column order. kie_timeout waits out KieClient's real 30 s
# timeout, so only the full campaign tries it.
FAULTS = ("kill", "db_drop", "db_refuse", *TG_FAILURES, *KIE_FAILURES)
SLOW_FAULTS = ("kie_timeout",)
ABOUT_FAULTS = {
    "kill": "kill -9 of trt serve right after the call/write, restarted on the same database",
    "db_drop": "PostgreSQL: every backend terminated; SQLite: write lock held 1 s",
    "db_refuse": "PostgreSQL: ALLOW_CONNECTIONS false + terminate for 3 s; SQLite: lock 7 s",
    "tg_5xx": "the Bot API answers this call 502",
    "tg_cut": "the connection is cut before the Bot API performs the call",
    "tg_timeout": "the Bot API performs the call, the answer is lost (a client timeout)",
    "tg_429": "the Bot API answers 429 with retry_after 1",
    "kie_cut": "KIE's answer is cut (createTask: after making the task; callback: lost)",
    "kie_timeout": "KIE answers after 31 s, beyond the client's 30 s timeout",
}


@dataclass(frozen=True, slots=True)
class Point:
    """Where a fault strikes.

    kind "telegram": the Bot API call `target` (or "screen": a sendMessage or
    editMessageText with a keyboard, "media": a sendPhoto/Video/Audio/Document), to the
    journey's `chat` ("user" or "admin"), whose text contains `text` when given.
    kind "kie": a KIE request (`createTask`, `recordInfo` of a finished task) or the
    callback KIE is about to send, for the journey's task.
    kind "gate": the service's first write to table `target` (PostgreSQL), once the
    gate is set, which is at the journey's step or when `gate_after` (a telegram or kie
    point) is reached.
    """

    name: str
    journey: str
    kind: str
    target: str
    about: str
    chat: str = "user"
    text: str | None = None
    markup: bool | None = None
    gate_after: Point | None = None

    def faults(self, database: str, slow: bool) -> list[str]:
        """The faults that make sense here; the others are "n/a" in the table."""
        if self.kind == "gate" and database != "postgresql":
            return []
        found = ["kill", "db_drop", "db_refuse"]
        if self.kind == "telegram":
            found += TG_FAILURES
        elif self.kind == "kie" and self.target in ("createTask", "recordInfo"):
            found += ["kie_cut", *(["kie_timeout"] if slow else [])]
        elif self.kind == "kie":
            found += ["kie_cut"]
        return found


@dataclass(frozen=True, slots=True)
class Finding:
    """Kinds: "fail", an invariant broken; "dup": an effect repeated (reported apart, as some are
    allowed: MONEY.md S6); "note": worth knowing, not a failure."""

    kind: str
    reason: str


@dataclass
class Outcome:
    database: str
    point: str
    fault: str
    label: str
    seconds: float = 0.0
    hit: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(f.kind == "fail" for f in self.findings)

    @property
    def duplicated(self) -> bool:
        return any(f.kind == "dup" for f in self.findings)
