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

from engine.graph import Edge, FlowGraph

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


def format_path(path: Path) -> str:
    if not path:
        return ""
    parts = [path[0].source]
    for edge in path:
        parts.append(f"-[{edge.trigger}]-> {edge.dest}")
    return " ".join(parts)
