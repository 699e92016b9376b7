"""Every path of `trt flows paths`, walked by a user, with the fault on its last step.

Why the last step: each covering path ends with the one transition it exists to cover
(the rest is the shortest way there), so striking there puts every transition of the
flow under a fault. The way there is set up without faults.

Paths are written over states; what a state leads to can depend on data the graph
does not see (which model was picked, whether there is money or a free generation
left, whether a code exists). `plan` arranges that data from the path itself, as
tests/test_paths_e2e.py does by search, and a path that starts at a pushed state (a
finished or failed job) starts with a real order that KIE finishes or fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.graph import BACK, INPUT, MAIN, OPTION, Edge, FlowGraph
from engine.loader import load_flow
from engine.paths import Path, covering_paths, format_path, shortest_paths
from flows.generation.settings import GenerationSettings
from kie.fake_media import render
from storage.jobs import JobStore
from storage.payments import PaymentStore
from storage.users import ensure_user
from tests.faults.journeys import (
    CATALOG,
    FLOW,
    Arm,
    Journey,
    Run,
    jobs_of,
    tap_again_if_stale,
)
from tests.faults.model import Point
from tests.faults.service import ADMIN_ID
from tests.faults.world import FAILURE, NEVER, SUCCESS, User
from tests.harness import ROOT, screen_pattern

LOADED = load_flow(ROOT / "flows.yaml")
GRAPH = FlowGraph(FLOW)
PATHS = covering_paths(GRAPH)
_NAV = "navigation"
FREE_LIMIT = int(GenerationSettings.model_fields["free_daily_limit"].default)
UNKNOWN_CODE = "NOSUCHCODE"

NAV_POINTS = (
    Point(
        "nav.move",
        _NAV,
        "gate",
        "conversation_state",
        "the step's state move (or an action's claim), before it commits",
    ),
    Point("nav.answer", _NAV, "telegram", "answerCallbackQuery", "the tap's callback answer"),
    Point("nav.screen", _NAV, "telegram", "screen", "the step's new screen", markup=True),
)


@dataclass(frozen=True, slots=True)
class Plan:
    path: Path
    edges: tuple[Edge, ...]  # from the main menu, the pushed state's order included
    push: str | None  # the pushed state a path starts at
    kind_button: str | None  # instead of "free" in the main menu
    model: str
    free_used: bool
    seed_job: bool

    @property
    def last_is_tap(self) -> bool:
        return self.edges[-1].trigger != INPUT


def plan(path: Path) -> Plan:
    edges = set(path)
    push = None if path[0].source == GRAPH.root else path[0].source
    insufficient = Edge("confirm", "button:go", "insufficient_funds") in edges
    image = Edge("model", "button:start", "image") in edges
    free = [m for m in CATALOG.by_kind("free")]
    if insufficient:
        kind: str | None = "t2i"
        model = next(m.id for m in CATALOG.by_kind("text_to_image") if not m.free)
    else:
        kind = None
        model = next(m.id for m in free if m.needs_image == image)
    realised = path
    if push is not None:
        order = shortest_paths(GRAPH)["confirm"]
        realised = (*order, Edge("confirm", "button:go", "job_started"), *path)
    return Plan(
        path=path,
        edges=tuple(realised),
        push=push,
        kind_button=kind,
        model=model,
        free_used=Edge("confirm", "button:go", "confirm") in edges,
        seed_job=Edge("history", OPTION, "history") in edges,
    )


class Navigation(Journey):
    name = _NAV
    points: ClassVar[tuple[Point, ...]] = NAV_POINTS

    def __init__(self, path: Path) -> None:
        self.plan = plan(path)
        self.seeded: dict[int, str] = {}

    @property
    def label(self) -> str:
        return format_path(self.plan.path)

    def applies(self, point: Point) -> bool:
        return point.name != "nav.answer" or self.plan.last_is_tap

    async def prepare(self, run: Run, user: User) -> None:
        world = run.world
        if self.plan.push == "job_failed":
            world.kie.behave(run.prompt(user), FAILURE)
        elif self.plan.push == "job_result":
            world.kie.behave(run.prompt(user), SUCCESS)
        else:
            # No job may finish while the path is walked: its pushed screen would move
            # the conversation under the walker (jobs left over time out and release).
            world.kie.behave(run.prompt(user), NEVER)
        await ensure_user(world.db.engine, user.id, language=user.locale)
        if self.plan.free_used:
            for n in range(FREE_LIMIT):
                await self._seed(run, user, f"free{n}")
        if self.plan.seed_job:
            self.seeded[user.id] = await self._seed(run, user, "done")
        if Edge("promo", INPUT, "balance") in self.plan.edges:
            await PaymentStore(world.db.engine).create_promo(
                code=self._code(run), amount=10_00, max_uses=1000, created_by=ADMIN_ID
            )
        await user.send("/start")
        for index, edge in enumerate(self.plan.edges[:-1]):
            await self._take(run, user, edge)
            state = await user.state()
            if edge.dest == "job_started" and self.plan.push is not None:
                state = await user.until_state(self.plan.push, within_s=20)
                edge = Edge(edge.source, edge.trigger, self.plan.push)
            if state != edge.dest:
                raise RuntimeError(f"set-up step {index} {edge} ended in {state}")

    async def walk(self, run: Run, user: User, arm: Arm) -> None:
        edge = self.plan.edges[-1]
        await arm(user)
        await self._take(run, user, edge)
        if edge.source != edge.dest and edge.trigger != INPUT:
            await tap_again_if_stale(user, lambda: self._take(run, user, edge), edge.source)

    async def check(self, run: Run, user: User) -> None:
        edge = self.plan.edges[-1]
        started = [e for e in self.plan.edges if e == Edge("confirm", "button:go", "job_started")]
        jobs = [j for j in await jobs_of(run.world, user) if j.state != "rejected"]
        if len(jobs) != len(started):
            run.fail(f"{len(jobs)} jobs for {len(started)} confirmed orders")
        state = await user.state()
        if state != edge.dest:
            run.fail(f"the path's last step {edge.trigger} ended in {state}, not {edge.dest}")
            return
        text = user.screen().text
        pattern = screen_pattern(LOADED, edge.dest, "ru")
        shown = [text, *text.split("\n\n", 1)[1:]]  # a notice may come first
        if not any(pattern.fullmatch(candidate) for candidate in shown):
            run.fail(f"state {state}, but the screen shows {text[:50]!r}")

    # ------------------------------------------------------------ steps

    def _code(self, run: Run) -> str:
        return f"NAV{run.number}"

    async def _take(self, run: Run, user: User, edge: Edge) -> None:
        trigger = edge.trigger
        if trigger == BACK:
            await user.tap("<")
        elif trigger == MAIN:
            await user.tap("^")
        elif trigger == OPTION:
            if edge.source == "models":
                await user.tap_option(self.plan.model)
            elif edge.source == "history":
                await user.tap_option(self.seeded[user.id])
            else:
                await user.tap_option()
        elif trigger == INPUT:
            if edge.source == "image":
                await user.photo()
            elif edge.source == "promo":
                await user.send(self._code(run) if edge.dest == "balance" else UNKNOWN_CODE)
            else:
                await user.send(run.prompt(user))
        else:
            button = trigger.split(":", 1)[1]
            if edge.source == GRAPH.root and button == "free" and self.plan.kind_button:
                button = self.plan.kind_button
            await user.tap(button)

    async def _seed(self, run: Run, user: User, name: str) -> str:
        """A finished free job, made by the set-up as test_paths_e2e does: history to get
        again, or free generations already used today."""
        jobs = JobStore(run.world.db.engine)
        kie = run.world.kie
        kie.files.setdefault("seed.png", render("png", "seed.png"))
        job_id = f"s{run.number}{name}{user.id}"[:32]
        job, _ = await jobs.create(
            id=job_id,
            key=f"seed:{job_id}",
            user_id=user.id,
            chat_id=user.id,
            locale="ru",
            model_id="z-image",
            kie_model="z-image",
            kind="text_to_image",
            request={"input": {"prompt": "seed"}, "title": "Seed", "data": {}},
            price=0,
            callback_secret="s",
            deadline_at=jobs.clock(),
        )
        url = f"{kie.base_url}/files/seed.png"
        await jobs.move(job.id, ["created"], "charged", result_urls=[url])
        return job.id


def navigations() -> list[Navigation]:
    return [Navigation(path) for path in PATHS]
