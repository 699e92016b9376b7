"""The campaign: every effect point of every journey, each fault that makes sense there,
one run each, and the invariants checked after every run.

A run: set-up without faults; arm the point; walk the step (Telegram redelivering
whatever was not acknowledged, KIE calling back and the service polling as they do);
let the run settle (outages over, the service back up, jobs final); check.

Time: the service runs with short deadlines (JOB_TIMEOUT_S=20, DELIVERY_LEASE_S=10) but
its recovery grace is a fixed 60 s. Rather than wait that out after every crash, time
is let pass for jobs nobody can be working on (`World.pass_time`): a job whose process
was killed, or that sat untouched for a few seconds outside a live delivery lease, has
its next check brought forward to now, as if the grace had run out. Deadlines, hold
timeouts and the ledger's clock are never moved. `--real-time` turns this off.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from flows.generation.settings import GenerationSettings
from storage.job_states import JOB_FINAL_STATES
from storage.ledger import Ledger
from storage.models import Hold, Transfer, table_of
from tests.faults.database import Gate
from tests.faults.fakes import KIE_FAILURES, TG_FAILURES, Params, Predicate, Strike
from tests.faults.journeys import (
    JOURNEYS,
    MEDIA,
    Journey,
    Run,
    common_checks,
)
from tests.faults.model import ABOUT_FAULTS, FAULTS, Finding, Outcome, Point
from tests.faults.navigation import NAV_POINTS, Navigation, navigations
from tests.faults.service import ADMIN_ID, JOB_TIMEOUT_S, SWEEP_INTERVAL_S
from tests.faults.world import SCREEN_METHODS, User, World
from tests.ledger_support import check_invariants

SETTLE_S = 90.0
GATE_WAIT_S = 30.0
# How long a run waits for its point after the walk (a KIE timeout takes 31 s).
STRIKE_WAIT_S = 45.0
PER_PATH = 2  # faults per path of `trt flows paths` in the full campaign
# The hold timeout `trt serve` gives generations with the campaign's JOB_TIMEOUT_S.
HOLD_TIMEOUT_S = GenerationSettings(JOB_TIMEOUT_S=JOB_TIMEOUT_S).hold_timeout.total_seconds()
SWEEP_S = float(SWEEP_INTERVAL_S)


@dataclass
class Options:
    quick: bool = False
    seed: int = 0
    slow: bool = True  # try kie_timeout (31 s each)
    nav_all: bool = False  # every path with every fault, instead of a rotation
    crowd: int = 1  # users besides the target, walking the same journey at once
    only: str | None = None  # a regular expression over "point fault"


# A handful of representative runs for --quick and the test suite's subset.
QUICK: tuple[tuple[str, str, int], ...] = (  # point, fault, which path for nav points
    ("gen.answer", "kill", 0),
    ("gen.create", "kie_cut", 0),
    ("gen.callback", "db_drop", 0),
    ("gen.delivery", "tg_5xx", 0),
    ("gen.result_screen", "kill", 0),
    ("gen.charge", "kill", 0),
    ("fail.release_screen", "tg_cut", 0),
    ("pay.credit", "kill", 0),
    ("pay.receipt", "tg_5xx", 0),
    ("promo.notice", "kill", 0),
    ("admin.reply", "tg_cut", 0),
    ("refund.call", "tg_timeout", 0),
    ("nav.answer", "kill", 25),
    ("nav.screen", "tg_5xx", 38),
    ("nav.screen", "db_refuse", 44),
    ("nav.move", "db_drop", 47),
)


@dataclass
class Planned:
    journey: Journey
    point: Point
    fault: str


def plan_runs(database: str, options: Options) -> list[Planned]:
    """The runs, in order: every (point, fault) of every journey, then the paths."""
    planned: list[Planned] = []
    slow = options.slow and not options.quick
    for journey_type in JOURNEYS.values():
        for point in journey_type.points:
            for fault in point.faults(database, slow):
                planned.append(Planned(journey_type(), point, fault))
    # Every path is walked with faults on its last step: all of them (--nav-all), or
    # two each, dealt from the shuffled (point, fault) pairs in turn so that every pair
    # is tried on several paths.
    pairs = [(p, f) for p in NAV_POINTS for f in p.faults(database, False)]
    random.Random(options.seed).shuffle(pairs)
    turn = 0
    for nav in navigations():
        fits = [(p, f) for p, f in pairs if nav.applies(p)]
        if not options.nav_all:
            chosen: list[tuple[Point, str]] = []
            while len(chosen) < PER_PATH:
                pair = pairs[turn % len(pairs)]
                turn += 1
                if nav.applies(pair[0]):
                    chosen.append(pair)
            fits = chosen
        for point, fault in fits:
            planned.append(Planned(Navigation(nav.plan.path), point, fault))
    if options.quick:
        planned = [r for p, f, i in QUICK if (r := pick(database, p, f, i)) is not None]
    if options.only:
        pattern = re.compile(options.only)
        planned = [r for r in planned if pattern.search(f"{r.point.name} {r.fault}")]
    return planned


def pick(database: str, point_name: str, fault: str, index: int = 0) -> Planned | None:
    """One run of `fault` at the point named; a path of the flow (the `index`-th that the
    point applies to) for the navigation points. None where the fault does not apply."""
    if point_name.startswith("nav."):
        point = next(p for p in NAV_POINTS if p.name == point_name)
        fits = [n for n in navigations() if n.applies(point)]
        journey: Journey = fits[index % len(fits)]
    else:
        journey_type = next(
            j for j in JOURNEYS.values() if point_name in [p.name for p in j.points]
        )
        point = next(p for p in journey_type.points if p.name == point_name)
        journey = journey_type()
    if fault not in point.faults(database, slow=True):
        return None
    return Planned(journey, point, fault)


# ------------------------------------------------------------------ striking


def _int(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def predicate(point: Point, run: Run, user: User) -> Predicate:
    """Whether an incoming call or request is this point, for this run's target user."""
    if point.kind == "kie":
        prompt = run.prompt(user)
        kie = run.world.kie

        def at_kie(endpoint: str, params: Params) -> bool:
            if endpoint != point.target:
                return False
            if endpoint == "recordInfo":
                task = kie.tasks.get(str(params.get("taskId")))
                return task is not None and task.prompt == prompt and task.done
            return params.get("prompt") == prompt

        return at_kie
    methods = {"screen": SCREEN_METHODS, "media": MEDIA}.get(point.target, (point.target,))

    def at_telegram(method: str, params: Params) -> bool:
        if method not in methods:
            return False
        if point.chat == "pre_checkout":
            mine = params.get("pre_checkout_query_id") in user.pre_checkouts
        elif method == "answerCallbackQuery":
            mine = str(params.get("callback_query_id", "")).startswith(str(user.id))
        elif method == "refundStarPayment":
            mine = _int(params.get("user_id")) == user.id
        else:
            chat = ADMIN_ID if point.chat == "admin" else user.id
            mine = _int(params.get("chat_id")) == chat
        text = str(params.get("text", ""))
        if point.text is not None and not text.startswith(point.text):
            return False
        if point.markup is not None and bool(params.get("reply_markup")) != point.markup:
            return False
        return mine

    return at_telegram


class Striker:
    """Arms one fault at one point for one run, and knows whether it struck."""

    def __init__(self, world: World, run: Run, point: Point, fault: str) -> None:
        self.world = world
        self.run = run
        self.point = point
        self.fault = fault
        self.fired = asyncio.Event()
        self._waiters: set[asyncio.Task[None]] = set()
        self._gates: list[Gate] = []

    async def strike(self) -> None:
        """The fault itself, for the ones that hit the process or the database."""
        self.fired.set()
        if self.fault == "kill":
            self.world.service.kill()
        elif self.fault == "db_drop":
            await self.world.db.drop()
        elif self.fault == "db_refuse":
            await self.world.db.refuse()

    def _strike(
        self,
        user: User,
        point: Point,
        action: Callable[[], Awaitable[None]] | None,
        failure: str | None,
    ) -> Strike:
        strike = Strike(predicate(point, self.run, user), failure=failure, action=action)
        if point.kind == "telegram":
            self.world.telegram.arm(strike)
        else:
            self.world.kie.arm(strike)
        return strike

    async def arm(self, user: User) -> None:
        point, fault = self.point, self.fault
        if point.kind == "gate":
            if point.gate_after is not None:
                self._strike(user, point.gate_after, self._open_gate, None)
            else:
                await self._open_gate()
            return
        failure = fault if fault in (*TG_FAILURES, *KIE_FAILURES) else None
        action = None if failure else self.strike
        strike = self._strike(user, point, action, failure)
        waiter = asyncio.create_task(self._mirror(strike))
        self._waiters.add(waiter)

    async def _mirror(self, strike: Strike) -> None:
        await strike.fired.wait()
        self.fired.set()

    async def _open_gate(self) -> None:
        """Sets the gate now; a waiter strikes once a writer is held there."""
        gate = await self.world.db.gate(self.point.target)
        self._gates.append(gate)
        waiter = asyncio.create_task(self._at_gate(gate), name=f"gate {gate.table}")
        self._waiters.add(waiter)

    async def _at_gate(self, gate: Gate) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                if await gate.blocked(GATE_WAIT_S):
                    await self.strike()
        finally:
            await gate.release()

    async def wait(self, done: Callable[[], Awaitable[bool]], within_s: float) -> None:
        """Until the fault struck (and a gate's strike is over), the journey finished
        without reaching the point, or `within_s`; then disarms everything."""
        deadline = time.monotonic() + within_s
        checked = 0.0
        while not self.fired.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                with contextlib.suppress(Exception):
                    if await done():
                        break
        gates = [t for t in self._waiters if t.get_name().startswith("gate")]
        if gates:
            await asyncio.wait(gates, timeout=GATE_WAIT_S + 5)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        await asyncio.gather(*self._waiters, return_exceptions=True)
        for gate in self._gates:
            await gate.release()
        self.world.telegram.armory.disarm()
        self.world.kie.armory.disarm()


# ------------------------------------------------------------------ one run


async def run_one(world: World, planned: Planned, number: int, crowd: int) -> Outcome:
    journey, point, fault = planned.journey, planned.point, planned.fault
    outcome = Outcome(world.db.kind, point.name, fault, journey.label)
    run = Run(world, point, fault, number)
    run.users = [world.user() for _ in range(1 + crowd)]
    target = run.users[0]
    started = time.monotonic()
    exits_before = len(world.service.unexpected_exits)
    striker = Striker(world, run, point, fault)
    try:
        for user in run.users:
            await journey.prepare(run, user)
    except Exception as exc:
        run.fail(f"set-up failed: {type(exc).__name__}: {exc}"[:300])
        outcome.findings = run.findings
        return outcome

    async def arm(user: User) -> None:
        if user is target:
            await striker.arm(user)

    async def walk(user: User) -> None:
        if user is not target and point.kind == "gate":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(striker.fired.wait(), GATE_WAIT_S)
        try:
            await journey.walk(run, user, arm)
        except Exception as exc:
            run.fail(f"user {user.id} could not go on: {type(exc).__name__}: {exc}"[:300])

    await asyncio.gather(*(walk(u) for u in run.users))

    async def done() -> bool:
        return all([await journey.done(run, u) for u in run.users])

    await striker.wait(done, STRIKE_WAIT_S)
    outcome.hit = striker.fired.is_set()
    if not outcome.hit:
        run.fail("the effect point was never reached: the fault did not strike")
    await settle(world, journey, run)
    for user in run.users:
        before = len(run.findings)
        try:
            await journey.check(run, user)
        except Exception as exc:
            run.fail(f"check failed: {type(exc).__name__}: {exc}"[:300])
        if user is not target:  # a bystander met the fault wherever it was
            run.findings[before:] = [
                Finding(f.kind, f"(bystander) {f.reason}") for f in run.findings[before:]
            ]
    common_checks(run)
    await global_checks(world, run)
    for code in world.service.unexpected_exits[exits_before:]:
        run.fail(f"trt serve exited by itself with code {code}")
    outcome.findings = run.findings
    outcome.seconds = time.monotonic() - started
    return outcome


async def settle(world: World, journey: Journey, run: Run) -> None:
    """Until the outage is over, the service is up and every user's journey is done."""
    await world.db.until_available()
    try:
        await world.service.ready(60)
    except TimeoutError:
        run.fail("trt serve did not become ready again within 60 s")
        return
    ids = [u.id for u in run.users]
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            finished = [await journey.done(run, u) for u in run.users]
        except Exception:
            finished = [False]
        if all(finished):
            break
        if time.monotonic() > deadline:
            run.fail(f"the run did not settle within {SETTLE_S:.0f} s")
            break
        with contextlib.suppress(Exception):
            await world.pass_time(ids)
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.3)  # what a finished job still sends (its screens) arrives


# ------------------------------------------------------------------ invariants


_UNIQUE = {
    "transfer id": "SELECT id FROM transfers GROUP BY id HAVING COUNT(*) > 1",
    "job key": "SELECT key FROM jobs GROUP BY key HAVING COUNT(*) > 1",
    "KIE task id": "SELECT task_id FROM jobs WHERE task_id IS NOT NULL "
    "GROUP BY task_id HAVING COUNT(*) > 1",
    "telegram_payment_charge_id": "SELECT charge_id FROM payments "
    "GROUP BY charge_id HAVING COUNT(*) > 1",
    "update_id": "SELECT update_id FROM processed_updates GROUP BY update_id HAVING COUNT(*) > 1",
    "admin_audit effect_key": "SELECT effect_key FROM admin_audit WHERE effect_key IS NOT NULL "
    "GROUP BY effect_key HAVING COUNT(*) > 1",
}


async def global_checks(world: World, run: Run) -> None:
    """The whole database after the run: I1-I4 and I7 (check_invariants), I5, I8 as far
    as time allows, S11 (one KIE task per job); each problem reported once, by the run
    that first saw it."""
    problems: list[str] = []
    try:
        await check_invariants(world.db.engine)
    except AssertionError as exc:
        problems.append(str(exc).splitlines()[0][:300])
    for what, sql in _UNIQUE.items():
        dups = await world.rows(sql)
        if dups:
            problems.append(f"I5: duplicate {what}: {[d[0] for d in dups][:5]}")
    tasks: dict[str, int] = {}
    for task in world.kie.tasks.values():
        found = re.search(r"/kie/callback/([^/]+)/", task.callback_url or "")
        if found:
            tasks[found.group(1)] = tasks.get(found.group(1), 0) + 1
    for job_id, count in tasks.items():
        if count > 1:
            problems.append(f"S11: job {job_id} made {count} KIE tasks")
    final = ", ".join(f"'{s}'" for s in JOB_FINAL_STATES)
    stale = await world.rows(
        "SELECT j.id, j.state FROM jobs j JOIN holds h ON h.id = j.hold_id "
        f"WHERE j.state IN ({final}) AND h.state = 'pending'"
    )
    for job_id, state in stale:
        problems.append(f"I3/I8: job {job_id} is {state} but its hold is still pending")
    lost = await world.rows("SELECT id FROM jobs WHERE state = 'lost'")
    for (job_id,) in lost:
        problems.append(f"S8: job {job_id} delivered but lost (hold expired before the charge)")
    problems += await overdue_holds(world, datetime.now(UTC))
    for problem in problems:
        if problem not in world.reported:
            world.reported.add(problem)
            run.fail(problem)


async def overdue_holds(world: World, now: datetime) -> list[str]:
    """I8: a pending hold past its timeout plus the sweeper interval, and a hold whose
    timeout is further away than the service's hold timeout allows."""
    holds = table_of(Hold)
    transfers = table_of(Transfer)
    async with world.db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(holds.c.id, holds.c.state, holds.c.timeout_at, transfers.c.created_at).join(
                    transfers, transfers.c.id == holds.c.id
                )
            )
        ).all()
    found = []
    slack = timedelta(seconds=SWEEP_S + 5)
    for hold_id, state, timeout_at, created_at in rows:
        timeout_at = timeout_at if timeout_at.tzinfo else timeout_at.replace(tzinfo=UTC)
        created_at = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        if state == "pending" and timeout_at + slack < now:
            found.append(f"I8: hold {hold_id} pending past its timeout + sweep interval")
        generation = str(hold_id).startswith("job:")
        if generation and timeout_at - created_at > timedelta(seconds=HOLD_TIMEOUT_S) + slack:
            found.append(f"I8: hold {hold_id} times out after {timeout_at - created_at}")
    return found


# ------------------------------------------------------------------ the report


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(o.failed for o in self.outcomes)


def _generic(reason: str) -> str:
    """A failure's reason without its ids, so equal findings group together."""
    reason = re.sub(r"\b[0-9a-f]{16}\b", "…", reason)
    reason = re.sub(r"\d{3,}", "…", reason)
    return reason


def render(report: Report, databases: list[str], slow: bool) -> str:
    points: list[Point] = [p for j in JOURNEYS.values() for p in j.points] + list(NAV_POINTS)
    lines = []
    width = max(len(p.name) for p in points) + 2
    header = "point".ljust(width) + "".join(f.rjust(12) for f in FAULTS)
    for database in databases:
        lines.append(
            f"\n== {database}: runs per effect point and fault "
            "(✗ failed runs, d runs with a duplicate, · not applicable)"
        )
        lines.append(header)
        for point in points:
            cells = []
            applicable = point.faults(database, slow)
            for fault in FAULTS:
                mine = [
                    o
                    for o in report.outcomes
                    if o.database == database and o.point == point.name and o.fault == fault
                ]
                if not mine:
                    cells.append("·" if fault not in applicable else "-")
                    continue
                cell = str(len(mine))
                if fails := sum(o.failed for o in mine):
                    cell += f" ✗{fails}"
                if dups := sum(o.duplicated for o in mine):
                    cell += f" d{dups}"
                cells.append(cell)
            lines.append(point.name.ljust(width) + "".join(c.rjust(12) for c in cells))
    lines.append("")
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in report.outcomes:
        for finding in outcome.findings:
            if finding.kind in ("fail", "dup"):
                groups.setdefault((finding.kind, _generic(finding.reason)), []).append(outcome)
    for kind, title in (("fail", "FAILURES"), ("dup", "DUPLICATES (reported apart)")):
        group = {k: v for k, v in groups.items() if k[0] == kind}
        lines.append(f"{title}: {sum(len(v) for v in group.values())}")
        for (_, reason), outcomes in sorted(group.items(), key=lambda kv: -len(kv[1])):
            where = sorted({f"{o.database}:{o.point}×{o.fault}" for o in outcomes})
            shown = ", ".join(where[:8]) + (f" (+{len(where) - 8})" if len(where) > 8 else "")
            lines.append(f"  - {reason}  [{len(outcomes)}x: {shown}]")
    lines.append("\nEffect points:")
    lines += [f"  {p.name.ljust(width)}{p.about}" for p in points]
    lines.append("Faults:")
    lines += [f"  {f.ljust(width)}{ABOUT_FAULTS[f]}" for f in FAULTS]
    total = len(report.outcomes)
    failed = sum(o.failed for o in report.outcomes)
    lines.append(
        f"\n{total} runs, {failed} failed, "
        f"{sum(o.duplicated for o in report.outcomes)} with duplicates"
    )
    lines += report.notes
    return "\n".join(lines)


def describe(outcome: Outcome) -> str:
    state = "FAIL" if outcome.failed else "ok"
    reasons = "; ".join(f.reason for f in outcome.findings if f.kind != "note")
    return (
        f"[{outcome.database}] {outcome.point} × {outcome.fault} "
        f"({outcome.label[:70]}): {state} {outcome.seconds:.1f}s {reasons}"
    )


async def campaign(
    world: World, options: Options, report: Report, progress: Callable[[str], None]
) -> None:
    """Every planned run on one world, then what every run leaves behind must settle."""
    planned = plan_runs(world.db.kind, options)
    progress(f"[{world.db.kind}] {len(planned)} runs")
    for number, item in enumerate(planned, 1):
        crowd = 0 if isinstance(item.journey, Navigation) or options.quick else options.crowd
        try:
            outcome = await run_one(world, item, number, crowd)
        except Exception as exc:
            outcome = Outcome(world.db.kind, item.point.name, item.fault, item.journey.label)
            outcome.findings.append(Finding("fail", f"the tool failed: {exc!r}"))
            progress(traceback.format_exc())
        report.outcomes.append(outcome)
        progress(f"{number:4d}/{len(planned)} {describe(outcome)}")
    await wind_down(world, report)


async def wind_down(world: World, report: Report) -> None:
    """Jobs left unfinished by the runs (the paths' never-ending ones) reach their
    deadline and are released; then no hold may stay pending (I3, I8)."""
    deadline = time.monotonic() + 60
    final = ", ".join(f"'{s}'" for s in JOB_FINAL_STATES)
    unfinished = f"SELECT DISTINCT user_id FROM jobs WHERE state NOT IN ({final})"
    users = [r[0] for r in await world.rows(unfinished)]
    while time.monotonic() < deadline:
        left = await world.value(f"SELECT COUNT(*) FROM jobs WHERE state NOT IN ({final})")
        if not left:
            break
        await world.pass_time(users)
        await asyncio.sleep(0.5)
    left_rows = await world.rows(f"SELECT id, state FROM jobs WHERE state NOT IN ({final})")
    pending = await world.value("SELECT COUNT(*) FROM holds WHERE state = 'pending'")
    outcome = Outcome(world.db.kind, "end", "-", "all jobs final, no hold pending")
    if left_rows:
        outcome.findings.append(Finding("fail", f"jobs never finished: {left_rows[:5]}"))
    if pending:
        outcome.findings.append(Finding("fail", f"{pending} holds still pending at the end"))
        # I8 then rests on the sweeper: run it on a clock past every timeout + interval.
        latest = await world.value("SELECT MAX(timeout_at) FROM holds WHERE state = 'pending'")
        moment = latest if isinstance(latest, datetime) else datetime.fromisoformat(str(latest))
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) + timedelta(
            seconds=SWEEP_S + 1
        )
        await Ledger(world.db.engine, clock=lambda: moment).expire_due()
        left = await world.value("SELECT COUNT(*) FROM holds WHERE state = 'pending'")
        outcome.findings.append(
            Finding("fail" if left else "note", f"the sweeper at {moment} left {left} pending")
        )
    report.outcomes.append(outcome)
    report.notes.append(
        f"[{world.db.kind}] end: {len(left_rows)} unfinished jobs, {pending} pending holds; "
        f"trt serve killed {world.service.kills}x, restarted {world.service.restarts}x, "
        f"exited by itself {len(world.service.unexpected_exits)}x"
    )
