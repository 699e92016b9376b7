"""Mermaid and DOT diagrams drawn from the same graph the runtime uses.

Edges are labelled with what a person taps: a button's text in the chosen locale,
Back and Main menu as the engine labels them, "a choice" for an options list and
"a message" for an input. The root and every state the product pushes are entries
(`[*] -->`), so the edges out of a pushed state hang from somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.graph import BACK, INPUT, MAIN, OPTION, FlowGraph, button_trigger
from engine.spec import FlowSpec, localized

Labels = Mapping[tuple[str, str], str]


def edge_labels(spec: FlowSpec, locale: str) -> dict[tuple[str, str], str]:
    """(state, trigger) -> what the user taps or sends there, in `locale`."""

    def local(text: Mapping[str, str]) -> str:
        return localized(text, locale, spec.fallback_locale)

    labels: dict[tuple[str, str], str] = {}
    for name, st in spec.states.items():
        for row in st.buttons:
            for button in row:
                labels[name, button_trigger(button.id)] = local(button.text)
        if st.options is not None:
            labels[name, OPTION] = f"‹{st.options.provider}›"
        if st.input is not None:
            labels[name, INPUT] = f"‹{', '.join(st.input.accept)}›"
        labels[name, BACK] = local(spec.system.back)
        labels[name, MAIN] = local(spec.system.main_menu)
    return labels


def _label(source: str, trigger: str, labels: Labels | None) -> str:
    found = labels.get((source, trigger)) if labels else None
    text = found if found is not None else trigger.split(":", 1)[-1]
    return text.replace('"', "'").replace("\n", " ")


def mermaid(graph: FlowGraph, *, with_main: bool = False, labels: Labels | None = None) -> str:
    lines = ["stateDiagram-v2"] + [f"    [*] --> {entry}" for entry in graph.entries]
    for edge in graph.edges():
        if edge.trigger == MAIN and not with_main:
            continue
        label = _label(edge.source, edge.trigger, labels).replace(":", "꞉")
        lines.append(f"    {edge.source} --> {edge.dest}: {label}")
    return "\n".join(lines) + "\n"


def dot(graph: FlowGraph, *, with_main: bool = False, labels: Labels | None = None) -> str:
    lines = ["digraph flows {", "    rankdir=LR;"]
    lines += [
        f'    "{entry}" [shape={"doublecircle" if entry == graph.root else "circle"}];'
        for entry in graph.entries
    ]
    for edge in graph.edges():
        if edge.trigger == MAIN and not with_main:
            continue
        style = ' style="dashed"' if edge.trigger == BACK else ""
        label = _label(edge.source, edge.trigger, labels)
        lines.append(f'    "{edge.source}" -> "{edge.dest}" [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
