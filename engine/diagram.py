"""Mermaid and DOT diagrams drawn from the same graph the runtime uses."""

from __future__ import annotations

from engine.graph import BACK, MAIN, FlowGraph


def _label(trigger: str) -> str:
    return trigger.split(":", 1)[-1]


def mermaid(graph: FlowGraph, *, with_main: bool = False) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {graph.root}"]
    for edge in graph.edges():
        if edge.trigger == MAIN and not with_main:
            continue
        lines.append(f"    {edge.source} --> {edge.dest}: {_label(edge.trigger)}")
    return "\n".join(lines) + "\n"


def dot(graph: FlowGraph, *, with_main: bool = False) -> str:
    lines = ["digraph flows {", "    rankdir=LR;", f'    "{graph.root}" [shape=doublecircle];']
    for edge in graph.edges():
        if edge.trigger == MAIN and not with_main:
            continue
        style = ' style="dashed"' if edge.trigger == BACK else ""
        lines.append(
            f'    "{edge.source}" -> "{edge.dest}" [label="{_label(edge.trigger)}"{style}];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"
