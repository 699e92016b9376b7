"""`python -m tests.faults`: the fault campaign (issue 11), on SQLite, PostgreSQL or both.

Prints the table of effect points × faults, then every failure with its reason; exits
1 when any run failed. `--quick` tries a representative handful; the full campaign
tries every point with every fault that applies there, and every path of
`trt flows paths` with a rotation of faults on its last step (`--nav-all`: all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.campaign import Options, Report, campaign, render
from tests.faults.database import (
    Database,
    admin_url,
    create_postgres,
    create_sqlite,
    drop_postgres,
)
from tests.faults.world import open_world


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="a representative handful of runs")
    parser.add_argument("--seed", type=int, default=0, help="the rotation of faults over paths")
    parser.add_argument("--nav-all", action="store_true", help="every path with every fault")
    parser.add_argument("--no-slow", action="store_true", help="skip kie_timeout (31 s a run)")
    parser.add_argument("--crowd", type=int, default=1, help="users besides the target")
    parser.add_argument("--only", help="a regular expression over 'point fault'")
    parser.add_argument(
        "--real-time",
        action="store_true",
        help="never let time pass for idle jobs: wait out the service's 60 s grace",
    )
    parser.add_argument("--logs", type=Path, help="where trt serve's logs go (default: a temp dir)")
    return parser.parse_args(argv)


async def one_database(kind: str, options: Options, report: Report, logs: Path, warp: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"faults-{kind}-"))
    admin = admin_url()
    url = await create_postgres(admin) if kind == "postgresql" else await create_sqlite(workdir)
    db = Database(url)
    log_path = logs / f"trt-serve-{kind}.log"
    try:
        with log_path.open("w", encoding="utf-8") as log:
            async with open_world(db, workdir, log, warp=warp) as world:
                await campaign(world, options, report, lambda line: print(line, file=sys.stderr))
    finally:
        await db.close()
        if kind == "postgresql":
            await drop_postgres(admin, url)
    report.notes.append(f"[{kind}] trt serve's log: {log_path}")


async def main_async(args: argparse.Namespace) -> int:
    options = Options(
        quick=args.quick,
        seed=args.seed,
        slow=not args.no_slow,
        nav_all=args.nav_all,
        crowd=max(0, args.crowd),
        only=args.only,
    )
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    logs = args.logs or Path(tempfile.mkdtemp(prefix="faults-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    for kind in kinds:
        await one_database(kind, options, report, logs, warp=not args.real_time)
    with (logs / "outcomes.jsonl").open("w", encoding="utf-8") as out:
        for outcome in report.outcomes:
            out.write(json.dumps(dataclasses.asdict(outcome), ensure_ascii=False) + "\n")
    print(render(report, kinds, options.slow and not options.quick))
    print(f"every run: {logs / 'outcomes.jsonl'}")
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
