"""`trt`: the operator's and the editor's command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from trt.observability.logs import configure_logging, logging_restored
from trt.settings import Settings, describe, read_all, secret_values

if TYPE_CHECKING:  # the flows commands import the engine when they run: `trt migrate` needs none
    from engine.loader import FlowError, LoadedFlow

log = logging.getLogger("trt")


def _load(path: Path) -> LoadedFlow | None:
    """The flow, if it passes the check; else its problems on stderr. Graphs and paths
    of a broken file would silently leave out what is broken."""
    from engine.checker import load_checked
    from engine.loader import FlowError
    from flows.registry import build_registry

    try:
        return load_checked(path, build_registry(eager_prices=False))
    except FlowError as exc:
        _print_problems(exc)
        return None


def _print_problems(exc: FlowError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def refused(command: str, path: Path) -> int | None:
    """1 (after printing why) when the flows file fails the check: `trt run` and `trt
    serve` do not start on it."""
    if _load(path) is not None:
        return None
    print(f"trt {command}: {path} fails the check (above); the bot does not start", file=sys.stderr)
    return 1


def flows_check(args: argparse.Namespace) -> int:
    from engine.checker import check_flow
    from engine.loader import FlowError, load_flow
    from flows.registry import build_registry

    try:
        flow = load_flow(args.file)
    except FlowError as exc:
        _print_problems(exc)
        return 1
    report = check_flow(flow, build_registry(eager_prices=False))
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
    from engine.diagram import dot, edge_labels, mermaid
    from engine.graph import FlowGraph

    flow = _load(args.file)
    if flow is None:
        return 1
    graph = FlowGraph(flow.spec)
    draw = dot if args.format == "dot" else mermaid
    labels = edge_labels(flow.spec, args.locale or flow.spec.default_locale)
    print(draw(graph, with_main=args.with_main, labels=labels), end="")
    return 0


def flows_paths(args: argparse.Namespace) -> int:
    from engine.diagram import edge_labels
    from engine.graph import FlowGraph
    from engine.paths import covering_paths, format_path, tap_labels
    from flows.registry import build_registry

    flow = _load(args.file)
    if flow is None:
        return 1
    paths = covering_paths(FlowGraph(flow.spec))
    if args.format == "states":
        for path in paths:
            print(format_path(path))
        return 0
    locale = args.locale or flow.spec.default_locale
    labels, registry = edge_labels(flow.spec, locale), build_registry()

    async def texts() -> list[str]:
        return [" → ".join(await tap_labels(p, flow.spec, registry, locale, labels)) for p in paths]

    import asyncio

    print("\n".join(asyncio.run(texts())))
    return 0


def jobs_graph(args: argparse.Namespace) -> int:
    from flows.generation.lifecycle import LIFECYCLE

    print(LIFECYCLE.dot() if args.format == "dot" else LIFECYCLE.mermaid(), end="")
    return 0


def pricing_check(args: argparse.Namespace) -> int:
    from pricing.catalog import DEFAULT_PATH
    from trt.pricing_menus import check_file

    args.file = args.file or DEFAULT_PATH
    report = check_file(args.file, args.flows)
    for line in report.notes + report.fallbacks:
        print(f"{args.file}: {line}")
    for problem in report.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if not report.ok:
        return 1
    print(
        f"{args.file}: ok, {report.models} models, {report.combinations} priced combinations"
        f" in menus ({len(report.fallbacks)} by fallback)"
    )
    return 0


def migrate(_: argparse.Namespace) -> int:
    from storage.migrate import upgrade_to_head

    upgrade_to_head()
    print("database is at the latest migration")
    return 0


def run(args: argparse.Namespace) -> int:
    from trt.run import run_bot

    settings = Settings()
    if (code := refused("run", settings.flows_path)) is not None:
        return code
    import asyncio

    try:
        return asyncio.run(run_bot(settings, args.lang))
    except KeyboardInterrupt:  # Ctrl-C ends a local chat: no traceback
        print("\nbye", file=sys.stderr)
        return 0


def serve(args: argparse.Namespace) -> int:
    from trt.serve import main as serve_main

    if (code := refused("serve", Settings().flows_path)) is not None:
        return code
    return serve_main(migrate=args.migrate)


def _say_bad(settings: object, command: str = "trt") -> None:
    """Each bad setting on a line of its own, named by its variable."""
    for line in str(settings).splitlines():
        print(f"{command}: {line}", file=sys.stderr)


SERVE_HELP = """\
Run the bot in production: one HTTP server for the Telegram webhook
(POST /telegram/webhook), KIE callbacks (POST /kie/callback/...), media links,
GET /healthz, GET /readyz and GET /metrics, on HOST:PORT.

With WEBHOOK_URL set it registers that URL with Telegram (with WEBHOOK_SECRET as
the secret token); without it, it long-polls. Needs BOT_TOKEN, KIE_API_KEY,
PUBLIC_BASE_URL, a WEBHOOK_SECRET of 16+ characters, and a database at the
latest migration (`trt migrate`, or `--migrate`). Every setting is listed in .env.example.
SIGTERM stops it gracefully: in-flight updates and job steps finish first.
Exit codes: 0 stopped, 1 could not start, 2 bad or missing settings."""


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
    graph.add_argument("--locale", help="label edges in this locale (default: the first)")
    graph.set_defaults(func=flows_graph)
    paths = flows.add_parser("paths", help="print a covering set of paths, shortest first")
    paths.add_argument("file", nargs="?", type=Path, default=default_flows)
    paths.add_argument(
        "--format",
        choices=["states", "text"],
        default="states",
        help="states: state -[trigger]-> state; text: the taps a person makes",
    )
    paths.add_argument("--locale", help="for --format text (default: the first)")
    paths.set_defaults(func=flows_paths)

    jobs = sub.add_parser("jobs", help="the generation job lifecycle").add_subparsers(
        dest="jobs_command", required=True
    )
    jgraph = jobs.add_parser(
        "graph", help="print the job state machine: states, legal moves and their guards"
    )
    jgraph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    jgraph.set_defaults(func=jobs_graph)

    pricing = sub.add_parser(
        "pricing", help="check the model catalog and its prices"
    ).add_subparsers(dest="pricing_command", required=True)
    pcheck = pricing.add_parser(
        "check",
        help="schema, variants and a price for every combination the menus reach;"
        " exit 1 with FILE: model X: message lines",
        description="Validate the price file against its JSON Schema and cross-field rules,"
        " and check that every parameter combination of every model a flows.yaml menu reaches"
        " has a price, exactly or by the nearest-variant fallback (each fallback is listed).",
    )
    pcheck.add_argument(
        "file", nargs="?", type=Path, default=None, help="default: pricing/KIE_PRICING_RUB.json"
    )
    pcheck.add_argument("--flows", type=Path, default=default_flows, help="default: %(default)s")
    pcheck.set_defaults(func=pricing_check)

    sub.add_parser("migrate", help="upgrade the database to the latest migration").set_defaults(
        func=migrate
    )
    run_cmd = sub.add_parser(
        "run", help="run the bot (no BOT_TOKEN: a local Telegram and a terminal chat)"
    )
    run_cmd.add_argument(
        "--lang", default="ru", help="the local chat's language (default: %(default)s)"
    )
    run_cmd.set_defaults(func=run)
    serve_cmd = sub.add_parser(
        "serve",
        help="run the bot in production: webhook or polling, health, readiness, metrics",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_cmd.add_argument(
        "--migrate",
        action="store_true",
        help="first bring the database to the latest migration (as `trt migrate`, in-process)",
    )
    serve_cmd.set_defaults(func=serve)
    return top


def log_level(args: argparse.Namespace, settings: Settings) -> str:
    """LOG_LEVEL when it is set; otherwise `trt serve` says what it does (INFO), and the
    other commands, which talk to their user on stdout, only warn."""
    if args.command == "serve" or "log_level" in settings.model_fields_set:
        return settings.log_level
    return "WARNING"


def main(argv: list[str] | None = None) -> int:
    """The `trt` program. Every subcommand logs through the one pipeline of
    `configure_logging` (redacted; JSON lines in production), installed once the settings
    are read and checked. Called with `argv` (in-process, from a test), it gives the
    caller's logging back on return."""
    try:
        top = parser()
    except ValidationError as exc:  # a malformed setting: name every one, not a traceback
        try:
            read_all()
        except ValueError as every:
            _say_bad(every)
        else:
            _say_bad(describe(exc))
        return 2
    args = top.parse_args(argv)
    try:
        read = read_all()
    except ValueError as exc:
        _say_bad(exc)
        return 2
    settings = next(item for item in read if isinstance(item, Settings))
    with logging_restored() if argv is not None else contextlib.nullcontext():
        configure_logging(
            level=log_level(args, settings),
            json_lines=settings.json_logs,
            secrets=secret_values(read),
        )
        try:
            result: int = args.func(args)
        except BrokenPipeError:  # `trt flows paths | head`: the reader had enough
            sys.stdout = open(os.devnull, "w")  # no flush error at exit
            return 0
        except Exception:  # its traceback as one redacted record, not raw on stderr
            log.exception("trt %s failed", args.command)
            return 1
        return result


if __name__ == "__main__":
    sys.exit(main())
