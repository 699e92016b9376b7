"""Every path of `trt flows paths`, driven through the real stack.

At every step: the stored state is the one the path says, the screen shows
that state's text, non-root screens carry Back and Main menu, and each tap's
callback query was answered exactly once (the harness asserts that).

Paths are written over states; which model a user picks is data the graph
does not see. Where an action's outcome depends on such data (for example
"start" leads to the image step only for models that need an image), the
driver tries the other options and the parallel buttons of earlier steps
(search with replay from /start) until the path's states are realised. The
last edge of a path is always taken exactly as written.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from engine import callback_data
from engine.graph import BACK, INPUT, MAIN, OPTION, Edge, FlowGraph
from engine.loader import load_flow
from engine.paths import Path, covering_paths, format_path, shortest_paths
from engine.store import MemoryStore
from kie.fake_script import Behaviour
from kie.fake_server import FakeKie
from tests.harness import ROOT, Chat, Stack, answer_text, running_stack, screen_pattern

FLOW = load_flow(ROOT / "flows.yaml")
GRAPH = FlowGraph(FLOW.spec)
PATHS = covering_paths(GRAPH)
_chat_ids = itertools.count(10_000)


# One stack for the module's many paths; the fixture and the tests share one loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    # Jobs never finish here: a finished job pushes its result screen, which would move
    # the conversation under the path being driven. Finished jobs have tests of their own.
    never = Behaviour(run_s=None, polls=10**9, callback=False)
    async with FakeKie(default=never) as kie, running_stack(MemoryStore(), kie=kie) as s:
        yield s


# A path through a pushed state (a finished job) starts with a full order and the push.
PUSH = "push"
PUSH_DATA = {"job_model": "Test model", "job_charge": "-", "job_reason": "-"}


def realisable(path: Path) -> Path:
    start = path[0].source
    if start == GRAPH.root:
        return path
    return (*shortest_paths(GRAPH)["confirm"], Edge("confirm", PUSH, start), *path)


async def seed_finished_job(stack: Stack, user_id: int) -> None:
    """A delivered, charged job, so the history screen lists a result to get again."""
    services = stack.product.services
    await services.account(user_id, "ru")
    job, _ = await stack.jobs.create(
        id=f"seed{user_id}",
        key=f"seed:{user_id}",
        user_id=user_id,
        chat_id=user_id,
        locale="ru",
        model_id="z-image",
        kie_model="z-image",
        kind="text_to_image",
        request={"input": {"prompt": "seed"}, "title": "Seed", "data": {}},
        price=0,
        callback_secret="s",
        deadline_at=stack.jobs.clock(),
    )
    url = f"{stack.kie.base_url}/files/seed.png"
    await stack.jobs.move(job.id, ["created"], "delivered", result_urls=[url])
    await stack.jobs.move(job.id, ["delivered"], "charged")


@contextlib.asynccontextmanager
async def arranged(stack: Stack, chat: Chat, edge: Edge) -> AsyncIterator[None]:
    """The world an outcome of `generate` needs: money for a start, no free generations
    left to be sent back to the order; a fresh user has no money for the third outcome."""
    settings = stack.product.generation.settings
    limit = settings.free_daily_limit
    if (edge.source, edge.trigger) == ("confirm", "button:go"):
        if edge.dest == "job_started":
            services = stack.product.services
            account = await services.account(chat.chat_id, "ru")
            await services.ledger.credit(
                f"paths-{chat.chat_id}", account, 10**7, source="topups", reason="test"
            )
        elif edge.dest == "confirm":
            settings.free_daily_limit = 0
    if (edge.source, edge.trigger) == ("promo", INPUT):
        # The example code exists; the way back to the promo step is a code already used.
        store = stack.product.payments.store
        await store.create_promo(code="WELCOME", amount=100, max_uses=10**6, created_by=0)
        if edge.dest == "promo":
            payments = stack.product.payments
            spent = await payments.redeem_promo("WELCOME", chat.chat_id, "ru", "paths-setup")
            assert spent == ("ok", 100)
    try:
        yield
    finally:
        settings.free_daily_limit = limit


@dataclass
class Step:
    kind: str  # "tap", "input" or "push"
    data: str = ""


async def current_state(chat: Chat) -> str:
    snap = await chat.stack.engine.store.load(f"{chat.chat_id}:{chat.chat_id}")
    assert snap is not None
    return snap.state


def check_screen(chat: Chat, state: str, locale: str) -> None:
    screen = chat.screen()
    assert screen_pattern(FLOW, state, locale).fullmatch(screen.text), (state, screen.text)
    last_row = [text for text, _ in screen.buttons[-1]] if screen.buttons else []
    system = FLOW.spec.system
    if state == FLOW.spec.root:
        assert system.back[locale] not in last_row
    else:
        assert last_row == [system.back[locale], system.main_menu[locale]], last_row


def alternatives(chat: Chat, path: Path, i: int) -> list[Step]:
    """Ways to take step i: the written trigger first, then equivalent ones."""
    edge = path[i]
    last = i == len(path) - 1
    screen = chat.screen()
    if edge.trigger == PUSH:
        return [Step(PUSH, edge.dest)]
    if edge.trigger == INPUT:
        spec = FLOW.spec.states[edge.source].input
        assert spec is not None
        return [Step("input", spec.example or "photo")]
    if edge.trigger == OPTION:
        marker = f":{callback_data.OPTION_ID}:"
        return [Step("tap", d) for _, d in screen.flat() if marker in d]
    triggers = [edge.trigger]
    if not last:
        triggers += [
            t
            for t, dests in GRAPH.triggers(edge.source).items()
            if edge.dest in dests and t != edge.trigger and t not in (BACK, MAIN, OPTION, INPUT)
        ]
    steps = []
    for trigger in triggers:
        if trigger == BACK:
            suffix = callback_data.BACK_ID
        elif trigger == MAIN:
            suffix = callback_data.MAIN_ID
        else:
            suffix = trigger.split(":", 1)[1]
        matches = [d for _, d in screen.flat() if d.rsplit(":", 1)[-1] == suffix]
        assert matches, (trigger, screen.flat())
        steps.append(Step("tap", matches[0]))
    return steps


def unimplemented_action(edge: Edge) -> bool:
    if not edge.trigger.startswith("button:"):
        return False
    button_id = edge.trigger.split(":", 1)[1]
    for row in FLOW.spec.states[edge.source].buttons:
        for button in row:
            if button.id == button_id and button.action:
                return button.action not in build_actions()
    return False


def build_actions() -> set[str]:
    from flows.registry import build_registry

    return set(build_registry().actions)


async def take(chat: Chat, step: Step) -> str | None:
    if step.kind == PUSH:
        before = len(chat.api.calls)
        bot = chat.stack.product.bot
        await chat.stack.engine.push(bot, chat.chat_id, chat.chat_id, step.data, PUSH_DATA)
        chat._track(chat.api.calls[before:])
        return None
    if step.kind == "input":
        if step.data == "photo":
            await chat.post(chat.api.make_photo_update(chat.chat_id, chat.chat_id))
        else:
            await chat.send(step.data)
        return None
    calls, _ = await chat.tap_data(step.data)
    return answer_text(calls)


async def drive(stack: Stack, path: Path, locale: str) -> str:
    """Realises the path; returns how it ended ("done" or "coming soon")."""
    path = realisable(path)
    choice = [0] * len(path)
    for _attempt in range(200):
        counts: list[int] = []
        chat = stack.chat(next(_chat_ids), language_code=locale)
        if Edge("history", OPTION, "history") in path:
            await seed_finished_job(stack, chat.chat_id)
        await chat.send("/start")
        assert await current_state(chat) == FLOW.spec.root
        check_screen(chat, FLOW.spec.root, locale)
        mismatch_at = None
        for i, edge in enumerate(path):
            alts = alternatives(chat, path, i)
            counts.append(len(alts))
            assert choice[i] < len(alts), f"no way to take {edge} in {format_path(path)}"
            async with arranged(stack, chat, edge):
                notice = await take(chat, alts[choice[i]])
            state = await current_state(chat)
            if unimplemented_action(edge):
                assert notice == FLOW.spec.system.coming_soon[locale]
                assert state == edge.source
                return "coming soon"
            if state != edge.dest:
                assert state in GRAPH.dests(edge.source, edge.trigger) or i < len(path) - 1
                mismatch_at = i
                break
            check_screen(chat, state, locale)
        if mismatch_at is None:
            return "done"
        # Next combination: bump the deepest step that has untried alternatives.
        j = mismatch_at
        while j >= 0 and choice[j] + 1 >= counts[j]:
            j -= 1
        assert j >= 0, f"path cannot be realised: {format_path(path)}"
        choice[j] += 1
        choice[j + 1 :] = [0] * (len(path) - j - 1)
    raise AssertionError(f"gave up on {format_path(path)}")


@pytest.mark.parametrize("path", PATHS, ids=[format_path(p) for p in PATHS])
async def test_path(stack: Stack, path: Path) -> None:
    outcome = await drive(stack, path, "ru")
    assert outcome in ("done", "coming soon")


@pytest.mark.parametrize("path", PATHS[:8], ids=[format_path(p) for p in PATHS[:8]])
async def test_path_in_english(stack: Stack, path: Path) -> None:
    assert await drive(stack, path, "en") in ("done", "coming soon")
