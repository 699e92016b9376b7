"""`trt`: the operator's and the editor's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from engine.checker import check_flow
from engine.diagram import dot, mermaid
from engine.graph import FlowGraph
from engine.loader import FlowError, LoadedFlow, load_flow
from engine.paths import covering_paths, format_path
from trt.settings import Settings


def _load(path: Path) -> LoadedFlow | None:
    try:
        return load_flow(path)
    except FlowError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def flows_check(args: argparse.Namespace) -> int:
    flow = _load(args.file)
    if flow is None:
        return 1
    from flows.registry import build_registry

    report = check_flow(flow, build_registry())
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if report.unimplemented_actions:
        print(
            "unimplemented actions (shown as coming soon): "
            + ", ".join(report.unimplemented_actions)
        )
    if report.unimplemented_providers:
        print(
            "unimplemented providers (placeholders show a dash): "
            + ", ".join(report.unimplemented_providers)
        )
    if not report.ok:
        return 1
    print(f"{args.file}: ok, {len(flow.spec.states)} states, version {flow.version}")
    return 0


def flows_graph(args: argparse.Namespace) -> int:
    flow = _load(args.file)
    if flow is None:
        return 1
    graph = FlowGraph(flow.spec)
    draw = dot if args.format == "dot" else mermaid
    print(draw(graph, with_main=args.with_main), end="")
    return 0


def flows_paths(args: argparse.Namespace) -> int:
    flow = _load(args.file)
    if flow is None:
        return 1
    for path in covering_paths(FlowGraph(flow.spec)):
        print(format_path(path))
    return 0


def migrate(_: argparse.Namespace) -> int:
    from storage.migrate import upgrade_to_head

    upgrade_to_head()
    print("database is at the latest migration")
    return 0


def run(_: argparse.Namespace) -> int:
    from trt.run import run_bot

    return asyncio.run(run_bot(Settings()))


def parser() -> argparse.ArgumentParser:
    default_flows = Settings().flows_path
    top = argparse.ArgumentParser(prog="trt", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    flows = sub.add_parser("flows", help="check and explore flows.yaml").add_subparsers(
        dest="flows_command", required=True
    )
    check = flows.add_parser("check", help="static check; exit 1 with FILE:LINE:COL lines")
    check.add_argument("file", nargs="?", type=Path, default=default_flows)
    check.set_defaults(func=flows_check)
    graph = flows.add_parser("graph", help="print the state diagram")
    graph.add_argument("file", nargs="?", type=Path, default=default_flows)
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    graph.add_argument("--with-main", action="store_true", help="draw Main menu edges too")
    graph.set_defaults(func=flows_graph)
    paths = flows.add_parser("paths", help="print a covering set of paths, shortest first")
    paths.add_argument("file", nargs="?", type=Path, default=default_flows)
    paths.set_defaults(func=flows_paths)

    sub.add_parser("migrate", help="upgrade the database to the latest migration").set_defaults(
        func=migrate
    )
    sub.add_parser(
        "run", help="run the bot (no BOT_TOKEN: a local Telegram and a terminal chat)"
    ).set_defaults(func=run)
    return top


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
