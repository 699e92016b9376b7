"""A covering set of paths, as in XState's model-based testing.

Every state and every transition appears in at least one path; each path is
the shortest way from the root to a transition, followed by that transition.
A state the product pushes (a finished job) is an entry of its own: paths
through its buttons start there.
Paths that are prefixes of other paths are dropped, so tests drive no step
more often than coverage needs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from engine.graph import INPUT, MAIN, OPTION, Edge, FlowGraph
from engine.registry import Context, Registry
from engine.spec import FlowSpec, Options, localized

Labels = Mapping[tuple[str, str], str]

Path = tuple[Edge, ...]


def shortest_paths(graph: FlowGraph) -> dict[str, Path]:
    """The shortest path from the root to each state it reaches (BFS, declaration order);
    states only a pushed state reaches get their path from that state."""
    best: dict[str, Path] = {}
    for entry in graph.entries:
        if entry in best:
            continue
        best[entry] = ()
        queue = deque([entry])
        while queue:
            source = queue.popleft()
            for trigger, dests in graph.triggers(source).items():
                for dest in dests:
                    if dest not in best:
                        best[dest] = (*best[source], Edge(source, trigger, dest))
                        queue.append(dest)
    return best


def covering_paths(graph: FlowGraph) -> list[Path]:
    best = shortest_paths(graph)
    candidates = {(*best[e.source], e) for e in graph.edges() if e.source in best}
    ordered = sorted(candidates, key=lambda p: (-len(p), format_path(p)))
    kept: list[Path] = []
    for path in ordered:
        if not any(other[: len(path)] == path for other in kept):
            kept.append(path)
    return sorted(kept, key=lambda p: (len(p), format_path(p)))


async def tap_labels(
    path: Path, spec: FlowSpec, registry: Registry, locale: str, labels: Labels
) -> list[str]:
    """What a person taps and types along `path`, from its entry: button texts, the
    first choice an options list offers then (its provider asked with the values the
    path has set so far), an input's example."""
    first = path[0].source
    steps = [labels.get((spec.root, MAIN), first) if first == spec.root else f"‹{first}›"]
    data: dict[str, object] = {}
    for edge in path:
        st = spec.states[edge.source]
        label = labels.get((edge.source, edge.trigger), edge.trigger)
        if edge.trigger == OPTION and st.options is not None:
            chosen = await _first_option(st.options, registry, edge.source, locale, data, spec)
            if chosen is not None:
                label, data[st.options.store] = chosen
        elif edge.trigger == INPUT and st.input is not None and st.input.example is not None:
            label = f"“{st.input.example}”"
            data[st.input.store] = st.input.example
        elif edge.trigger.startswith("button:"):
            button_id = edge.trigger.split(":", 1)[1]
            button = next(b for row in st.buttons for b in row if b.id == button_id)
            data.update(button.set)
        steps.append(label)
    return steps


async def _first_option(
    options: Options,
    registry: Registry,
    state: str,
    locale: str,
    data: dict[str, object],
    spec: FlowSpec,
) -> tuple[str, str] | None:
    provider = registry.options_providers.get(options.provider)
    if provider is None:
        return None
    ctx = Context(bot=None, user_id=0, chat_id=0, locale=locale, state=state, data=dict(data))  # type: ignore[arg-type]
    ctx.args = options.args
    try:
        found = await provider(ctx)
    except Exception:  # a provider that needs the database or a user: keep the name
        return None
    if not found:
        return None
    label, fallback = found[0].label, spec.fallback_locale
    text = label if isinstance(label, str) else localized(label, locale, fallback)
    return text, found[0].value


def format_path(path: Path) -> str:
    if not path:
        return ""
    parts = [path[0].source]
    for edge in path:
        parts.append(f"-[{edge.trigger}]-> {edge.dest}")
    return " ".join(parts)
