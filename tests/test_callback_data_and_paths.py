"""Callback data encoding, and the covering path set of the real flows.yaml."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from engine import callback_data
from engine.diagram import dot, edge_labels, mermaid
from engine.graph import BACK, MAIN, FlowGraph
from engine.loader import load_flow
from engine.paths import covering_paths, format_path, shortest_paths
from pricing.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
FLOW = load_flow(ROOT / "flows.yaml")
GRAPH = FlowGraph(FLOW.spec)
CATALOG = load_catalog()


@given(
    counter=st.integers(min_value=0, max_value=10**12),
    button=st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True),
)
def test_button_data_round_trips(counter: int, button: str) -> None:
    data = callback_data.prefix("ab12", counter) + button
    assert len(data.encode()) <= callback_data.MAX_BYTES
    tap = callback_data.decode(data)
    assert tap is not None
    assert (tap.version, tap.button, tap.value) == ("ab12", button, None)
    assert callback_data.same_counter(tap, counter)
    assert not callback_data.same_counter(tap, counter + 1)


@given(value=st.text(min_size=1, max_size=24))
def test_option_data_round_trips(value: str) -> None:
    data = callback_data.prefix("ab12", 7) + callback_data.OPTION_ID + ":" + value
    tap = callback_data.decode(data)
    if len(data.encode()) > callback_data.MAX_BYTES:
        assert tap is None
    else:
        assert tap is not None and tap.value == value


def test_malformed_data_is_rejected() -> None:
    for bad in [None, "", "x", "a:b", "v:zzzzzzzz:b", "v:1:#", "v:1:b:extra", "v:!:b", "a" * 65]:
        assert callback_data.decode(bad) is None, bad


def test_paths_cover_every_state_and_transition() -> None:
    paths = covering_paths(GRAPH)
    covered_edges = {edge for path in paths for edge in path}
    assert covered_edges == set(GRAPH.edges())
    covered_states = set(GRAPH.entries) | {edge.dest for edge in covered_edges}
    assert covered_states == set(FLOW.spec.states)
    # Shortest first, every path starts at an entry (the root unless the state is
    # pushed or a command opens it), no path is a prefix of another.
    assert [len(p) for p in paths] == sorted(len(p) for p in paths)
    assert GRAPH.entries == ["main", "job_result", "job_failed", "balance", "help"]
    assert all(p[0].source in GRAPH.entries for p in paths)
    assert {p[0].source for p in paths if p[0].source != GRAPH.root} == {
        "job_result",
        "job_failed",
    }
    for a in paths:
        assert not any(a != b and b[: len(a)] == a for b in paths)
    # Each path is connected.
    for p in paths:
        assert all(x.dest == y.source for x, y in itertools.pairwise(p))


def test_every_non_root_state_has_back_and_main() -> None:
    for state in FLOW.spec.states:
        triggers = GRAPH.triggers(state)
        if state == GRAPH.root:
            assert BACK not in triggers and MAIN not in triggers
        else:
            assert len(triggers[BACK]) == 1 and triggers[MAIN] == (GRAPH.root,)


def test_shortest_paths_are_shortest() -> None:
    best = shortest_paths(GRAPH)
    assert best["main"] == ()
    assert format_path(best["confirm"]).split(" ")[-1] == "confirm"
    assert len(best["confirm"]) == 4  # main -> models -> model -> prompt -> confirm


def test_diagrams_name_every_state() -> None:
    for text in (mermaid(GRAPH), dot(GRAPH)):
        for state in FLOW.spec.states:
            assert state in text
    assert "models --> model: option" in mermaid(GRAPH)
    assert '"help" -> "main" [label="back" style="dashed"];' in dot(GRAPH)


def test_diagrams_label_edges_with_what_a_person_taps() -> None:
    """In the chosen locale; pushed states are entries, so their edges hang from one."""
    en = edge_labels(FLOW.spec, "en")
    drawn = mermaid(GRAPH, labels=en)
    assert "main --> models: 🖼 Text → image" in drawn
    assert "models --> model: ‹models_by_kind›" in drawn
    assert "[*] --> job_result" in drawn and "job_result --> confirm: 🔁 Again" in drawn
    assert "help --> main: « Back" in drawn
    ru = dot(GRAPH, labels=edge_labels(FLOW.spec, "ru"))
    assert '"help" -> "main" [label="« Назад" style="dashed"];' in ru
    assert '"job_result" [shape=circle];' in ru


def test_paths_as_text_are_the_taps_a_person_makes() -> None:
    found = subprocess.run(
        [sys.executable, "-m", "trt.cli", "flows", "paths", "--format", "text", "--locale", "en"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.splitlines()
    states = subprocess.run(
        [sys.executable, "-m", "trt.cli", "flows", "paths"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.splitlines()
    assert len(found) == len(states) == len(covering_paths(GRAPH))
    assert "≡ Main menu → 🖼 Text → image" in found
    # The model is the first the menu offers then (its provider asked with the kind set).
    model = CATALOG.by_kind("free")[0].title["en"]
    start = f"≡ Main menu → 🆓 Free models → {model} → ▶️ Start"
    assert any(line.startswith(start + " → “") for line in found)
    assert "‹job_result› → 🔁 Again" in found
