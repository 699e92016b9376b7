"""The flow as a `transitions` state machine: the one graph everything reads.

Built once per flow version. The runtime, the checker, the path generator and
the diagrams all read edges from this machine, so they cannot disagree about
where a button leads. Conversations do not live in it as models (that would
cost an object per update); their state lives in a `StateStore`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from transitions import Machine

from engine.spec import FlowSpec

BACK = "back"
MAIN = "main"
OPTION = "option"
INPUT = "input"


def button_trigger(button_id: str) -> str:
    return f"button:{button_id}"


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    trigger: str
    dest: str


def back_target(spec: FlowSpec, state: str) -> str | None:
    """Explicit `back:` wins; otherwise the parent; the root has none."""
    if state == spec.root:
        return None
    st = spec.states[state]
    return st.back or st.parent


def declared_edges(spec: FlowSpec) -> Iterator[Edge]:
    """Every edge the file declares, including the automatic Back and Main menu."""
    for name, st in spec.states.items():
        for row in st.buttons:
            for button in row:
                dests = [button.to] if button.to else []
                dests += [d for d in button.outcomes if d not in dests]
                if not dests:
                    dests = [name]  # an action that stays on its screen
                for dest in dests:
                    yield Edge(name, button_trigger(button.id), dest)
        if st.options is not None:
            yield Edge(name, OPTION, st.options.to)
        if st.input is not None:
            yield Edge(name, INPUT, st.input.next)
            for dest in st.input.outcomes:
                if dest != st.input.next:
                    yield Edge(name, INPUT, dest)
        back = back_target(spec, name)
        if back is not None:
            yield Edge(name, BACK, back)
        if name != spec.root:
            yield Edge(name, MAIN, spec.root)


class FlowGraph:
    """Edges by source and trigger, read from a `transitions.Machine`."""

    def __init__(self, spec: FlowSpec) -> None:
        self.root = spec.root
        self.states = list(spec.states)
        # Where conversations begin: the root, and the states the product pushes.
        self.entries = [spec.root] + [n for n, st in spec.states.items() if st.pushed is not None]
        # A command opens its screen from anywhere: that screen is an entry too.
        self.entries += [s for s in spec.commands.values() if s not in self.entries]
        known = set(self.states)
        edges = [e for e in declared_edges(spec) if e.dest in known]
        self.machine = Machine(
            model=None,
            states=self.states,
            transitions=[{"trigger": e.trigger, "source": e.source, "dest": e.dest} for e in edges],
            initial=spec.root,
            auto_transitions=False,
        )
        self._by_source: dict[str, dict[str, tuple[str, ...]]] = {s: {} for s in self.states}
        for trigger, event in self.machine.events.items():
            for source, transitions in event.transitions.items():
                self._by_source[source][trigger] = tuple(
                    t.dest for t in transitions if t.dest is not None
                )

    def dests(self, source: str, trigger: str) -> tuple[str, ...]:
        return self._by_source.get(source, {}).get(trigger, ())

    def triggers(self, source: str) -> dict[str, tuple[str, ...]]:
        return self._by_source.get(source, {})

    def edges(self) -> Iterator[Edge]:
        for source in self.states:
            for trigger, dests in self._by_source[source].items():
                for dest in dests:
                    yield Edge(source, trigger, dest)

    def reachable_from(self, start: str) -> set[str]:
        seen = {start}
        todo = [start]
        while todo:
            for dests in self._by_source[todo.pop()].values():
                for dest in dests:
                    if dest not in seen:
                        seen.add(dest)
                        todo.append(dest)
        return seen
