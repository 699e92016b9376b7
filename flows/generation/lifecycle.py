"""The generation job's lifecycle as a declared state machine: states, legal moves, guards.

Why a machine: the callback, the poller, recovery and several processes all move
jobs. Each move is a named trigger with its sources, destination and a guard; the
service asks for a move by name, and only a move this table allows (from the job's
current state, with its guard true) reaches the database, where a compare-and-set
on the state (and, for a lease, on its expiry) decides races. `trt jobs graph`
draws this same table.

Delivery is claimed before it happens: `claim_delivery` moves a succeeded job to
`delivering` with a lease (the job's `next_check_at`) longer than every timeout
inside delivery, so at most one sender exists at a time; a sender that died leaves
the lease to expire, and `reclaim_delivery` lets the next one take over (MONEY.md
S6: the user may then see the result twice, and is never charged twice).

    created -> held -> submitting -> submitted -> running -> succeeded
       |         \\          \\            \\          \\          |
       v          `----------`------------`----------`-> failed  v
    rejected                                            |   delivering -> delivered -> charged
                                                        v                        \\
                                                     released                     `-> lost
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from transitions import Machine

from storage.job_states import JOB_FINAL_STATES, JobState
from storage.jobs import JobRecord
from storage.models import JOB_STATES

S = JobState
ACTIVE = (S.SUBMITTED, S.RUNNING)
UNFINISHED = tuple(s for s in JobState if s not in JOB_FINAL_STATES)

# The legal moves: trigger, sources, destination, guard (a method of `_Guards`).
MOVES: tuple[dict[str, Any], ...] = (
    {"trigger": "hold", "source": [S.CREATED], "dest": S.HELD, "conditions": "always"},
    {"trigger": "reject", "source": [S.CREATED], "dest": S.REJECTED, "conditions": "always"},
    {"trigger": "submit", "source": [S.HELD], "dest": S.SUBMITTING, "conditions": "always"},
    {
        "trigger": "accept",
        "source": [S.SUBMITTING],
        "dest": S.SUBMITTED,
        "conditions": "names_a_task",
    },
    {"trigger": "progress", "source": [S.SUBMITTED], "dest": S.RUNNING, "conditions": "always"},
    {
        "trigger": "succeed",
        "source": [S.SUBMITTING, *ACTIVE],
        "dest": S.SUCCEEDED,
        "conditions": "has_results",
    },
    {
        "trigger": "claim_delivery",
        "source": [S.SUCCEEDED],
        "dest": S.DELIVERING,
        "conditions": "has_results",
    },
    {
        "trigger": "reclaim_delivery",
        "source": [S.DELIVERING],
        "dest": S.DELIVERING,
        "conditions": "lease_expired",
    },
    {"trigger": "deliver", "source": [S.DELIVERING], "dest": S.DELIVERED, "conditions": "always"},
    {"trigger": "charge", "source": [S.DELIVERED], "dest": S.CHARGED, "conditions": "always"},
    {"trigger": "lose", "source": [S.DELIVERED], "dest": S.LOST, "conditions": "always"},
    {
        "trigger": "fail",
        "source": [S.CREATED, S.HELD, S.SUBMITTING, *ACTIVE],
        "dest": S.FAILED,
        "conditions": "always",
    },
    {"trigger": "release", "source": [S.FAILED], "dest": S.RELEASED, "conditions": "always"},
)


class _Guards:
    """What `transitions` evaluates a guard on: one job as read, the moment, the move's
    new values. A throwaway model per check, so the machine itself holds no job."""

    def __init__(self, job: JobRecord, now: datetime, changes: dict[str, Any]) -> None:
        self.state = job.state
        self.job = job
        self.now = now
        self.changes = changes

    def always(self) -> bool:
        return True

    def names_a_task(self) -> bool:
        return bool(self.changes.get("task_id") or self.job.task_id)

    def has_results(self) -> bool:
        return bool(self.changes.get("result_urls") or self.job.result_urls)

    def lease_expired(self) -> bool:
        return self.job.next_check_at <= self.now


@dataclass(frozen=True, slots=True)
class Move:
    """A move the table allows: compare-and-set from `sources` to `dest`; `due_by` set
    when the move also needs the job's time (a lease) to have come."""

    trigger: str
    sources: tuple[JobState, ...]
    dest: JobState
    due_by: datetime | None = None


class JobLifecycle:
    """The machine, built once per process; `plan` answers "may this job move so now?"."""

    def __init__(self) -> None:
        self.machine = Machine(
            model=None,
            states=[s.value for s in JobState],
            transitions=[
                {**m, "source": [s.value for s in m["source"]], "dest": m["dest"].value}
                for m in MOVES
            ],
            initial=S.CREATED.value,
            auto_transitions=False,
            send_event=False,
        )
        if set(self.machine.states) != set(JOB_STATES):
            raise AssertionError("the lifecycle's states differ from storage.models.JOB_STATES")

    def plan(
        self, job: JobRecord, trigger: str, now: datetime, changes: dict[str, Any] | None = None
    ) -> Move | None:
        """The move `trigger` makes from the job's state, or None when the table does not
        allow it there or its guard is false (the job moved on, or the lease holds)."""
        event = self.machine.events.get(trigger)
        if event is None:
            raise KeyError(f"no job move {trigger!r}")
        candidates = event.transitions.get(job.state, [])
        if not candidates:
            return None
        transition = candidates[0]
        guards = _Guards(job, now, changes or {})
        if not all(getattr(guards, str(c.func))() == c.target for c in transition.conditions):
            return None
        dest = JobState(str(transition.dest))
        sources = tuple(JobState(s) for s in sorted(event.transitions))
        due_by = now if transition.source == dest else None  # a lease taken over
        return Move(trigger, sources, dest, due_by)

    def moves(self) -> list[tuple[str, str, str, str]]:
        """(source, trigger, dest, guard) for every legal move: the diagram's edges."""
        return [
            (source, trigger, str(t.dest), ",".join(str(c.func) for c in t.conditions))
            for trigger, event in self.machine.events.items()
            for source, transitions in event.transitions.items()
            for t in transitions
        ]

    def mermaid(self) -> str:
        lines = ["stateDiagram-v2", f"    [*] --> {S.CREATED.value}"]
        for source, trigger, dest, guard in self.moves():
            label = trigger if guard == "always" else f"{trigger} [{guard}]"
            lines.append(f"    {source} --> {dest}: {label}")
        lines.extend(f"    {final} --> [*]" for final in JOB_FINAL_STATES)
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        lines = ["digraph jobs {", "    rankdir=LR;"]
        for final in JOB_FINAL_STATES:
            lines.append(f'    "{final}" [shape=doublecircle];')
        for source, trigger, dest, guard in self.moves():
            label = trigger if guard == "always" else f"{trigger} [{guard}]"
            lines.append(f'    "{source}" -> "{dest}" [label="{label}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"


LIFECYCLE = JobLifecycle()
