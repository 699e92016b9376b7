"""Per-user flood control over the real stack: a burst gets one "one moment" notice, every
tap is still answered, and nothing waits in a queue without bound.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from engine.registry import Context, Outcome
from tests.harness import Chat, answer_text, running_stack
from tests.service_support import mini_flow, product_system_texts, sample
from trt.flood import FloodControl, FloodLimits

BUSY = product_system_texts()["busy"]["ru"]


async def burst(chat: Chat, label: str, taps: int) -> list[str | None]:
    """Taps `label` on the current screen `taps` times at once; each tap's answer text."""
    data = chat.screen().data_of(label)
    results = await asyncio.gather(*(chat.tap_data(data) for _ in range(taps)))
    # tap_data has checked that each query was answered exactly once.
    return [answer_text(calls, query_id) for calls, query_id in results]


async def test_a_burst_of_taps_gets_one_notice_and_every_tap_an_answer(tmp_path: Path) -> None:
    runs: list[int] = []

    async def work(ctx: Context) -> Outcome:
        runs.append(ctx.user_id)
        return Outcome()

    limits = FloodLimits(rate=0.1, burst=3, in_flight=100)
    async with running_stack(
        flow_path=mini_flow(tmp_path), actions={"work": work}, flood=limits
    ) as stack:
        chat = stack.chat(31)
        await chat.send("/start")  # one of the three
        flooded = sample("trt_updates_total", type="callback_query", outcome="flooded")
        answers = await burst(chat, "Работа", 10)
        assert answers.count(BUSY) == 1
        assert sample("trt_updates_total", type="callback_query", outcome="flooded") == flooded + 8
        assert runs == [31]  # of the two let through, the second found its screen stale


class Clock:
    """Flood control's clock, moved by the test: a pause costs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_after_a_pause_taps_work_and_a_new_burst_gets_a_new_notice(tmp_path: Path) -> None:
    limits = FloodLimits(rate=5, burst=2, in_flight=100)
    clock = Clock()
    async with running_stack(
        flow_path=mini_flow(tmp_path), flood=limits, flood_clock=clock
    ) as stack:
        chat = stack.chat(32)
        await chat.send("/start")
        clock.now += 0.5  # the bucket is full again
        assert (await burst(chat, "Дальше", 6)).count(BUSY) == 1
        # No time has passed on the clock: still empty, so dropped, and silently.
        assert (await burst(chat, chat.screen().flat()[0][0], 1)) == [None]
        clock.now += 0.5
        await chat.tap(chat.screen().flat()[0][0])  # let through: the screen moves on
        assert (await burst(chat, chat.screen().flat()[0][0], 6)).count(BUSY) == 1


async def test_a_burst_of_messages_gets_one_notice_and_no_queue(tmp_path: Path) -> None:
    limits = FloodLimits(rate=0.1, burst=2, in_flight=100)
    async with running_stack(flow_path=mini_flow(tmp_path), flood=limits) as stack:
        chat = stack.chat(33)
        before = len(stack.api.calls)
        await asyncio.gather(*(chat.send("/start") for _ in range(8)))
        texts = [c.params["text"] for c in stack.api.calls[before:] if c.method == "sendMessage"]
        assert texts.count(BUSY) == 1
        assert len(texts) == 3  # two screens and the notice; six messages dropped


async def test_taps_beyond_the_in_flight_cap_are_dropped_without_waiting(tmp_path: Path) -> None:
    finished: list[float] = []
    release = asyncio.Event()

    async def work(ctx: Context) -> Outcome:
        await release.wait()  # a slow action, until every other tap has its answer
        finished.append(time.monotonic())
        return Outcome()

    limits = FloodLimits(rate=100, burst=100, in_flight=2)
    async with running_stack(
        flow_path=mini_flow(tmp_path), actions={"work": work}, flood=limits
    ) as stack:
        chat = stack.chat(34)
        await chat.send("/start")
        data = chat.screen().data_of("Работа")
        since = len(stack.api.calls)
        taps = asyncio.gather(*(chat.tap_data(data) for _ in range(6)))
        for _ in range(4):  # the four dropped are answered meanwhile
            answered = await stack.api.wait_for_call("answerCallbackQuery", timeout=30, since=since)
            since = stack.api.calls.index(answered) + 1
        release.set()
        results = await taps
        answered_at = {
            c.params["callback_query_id"]: c.at for c in stack.api.calls_of("answerCallbackQuery")
        }
        dropped = [qid for calls, qid in results if answer_text(calls, qid) in (BUSY, None)]
        assert [answer_text(calls, qid) for calls, qid in results].count(BUSY) == 1
        assert len(finished) == 1
        # Four were dropped at once: answered before the slow action was done (compared
        # with when it finished, not with a wall-clock budget a busy machine can miss).
        early = [qid for qid in dropped if answered_at[qid] < finished[0]]
        assert len(early) == 4


def take(control: FloodControl, user_id: int) -> None:
    """One update of `user_id` let through, as the middleware does."""
    control._bucket(user_id).tokens -= 1


async def test_the_buckets_are_bounded(tmp_path: Path) -> None:
    async with running_stack(flow_path=mini_flow(tmp_path)) as stack:
        control = FloodControl(stack.engine, FloodLimits(users=3), clock=Clock())
        for user_id in range(1, 6):
            take(control, user_id)
        assert list(control._buckets) == [3, 4, 5]
        take(control, 3)
        take(control, 6)
        assert list(control._buckets) == [5, 3, 6]


async def test_buckets_full_again_are_forgotten(tmp_path: Path) -> None:
    async with running_stack(flow_path=mini_flow(tmp_path)) as stack:
        clock = Clock()
        limits = FloodLimits(rate=2, burst=4)
        control = FloodControl(stack.engine, limits, clock=clock)
        for user_id in range(1, 1001):
            take(control, user_id)
        control._buckets[2].in_flight = 1  # an update of user 2 still runs
        clock.now += 0.49  # not full yet: 3 + 0.98 tokens
        take(control, 1001)
        assert len(control._buckets) == 1001
        clock.now += 0.01  # now every bucket taken from at the start is full again
        take(control, 1002)
        # User 1's went; user 2's stays while its update runs, and keeps those behind it.
        assert list(control._buckets)[:2] == [2, 3] and len(control._buckets) == 1001
        control._buckets[2].in_flight = 0
        take(control, 1003)
        assert list(control._buckets) == [1001, 1002, 1003]
