"""The job lifecycle as a declared machine, and delivery claimed before it happens
(issue 11, defect 4): at most one sender of a result at a time, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

import flows.generation.service as service_module
from flows.generation.lifecycle import LIFECYCLE, JobState
from storage.db import write_transaction
from storage.jobs import JobRecord
from storage.models import JOB_STATES
from tests.harness import ROOT, Stack
from tests.test_generation_e2e import (
    RICH,
    available,
    calls_to,
    final_job,
    fund,
    job_of,
    kie,
    order,
    stack,
)

__all__ = ["kie", "stack"]  # fixtures, used by name
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def record(state: str, **over: Any) -> JobRecord:
    values: dict[str, Any] = dict(
        id="j1", key="k1", user_id=1, chat_id=1, locale="ru", model_id="m", kie_model="m",
        kind="text_to_image", request={}, price=100, hold_id="job:j1", task_id=None,
        callback_secret="s", state=state, result_urls=[], error=None, progress_message_id=None,
        polls=0, next_check_at=NOW, deadline_at=NOW, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    return JobRecord(**(values | over))


def test_the_machine_knows_every_stored_state_and_nothing_else() -> None:
    assert {s.value for s in JobState} == set(JOB_STATES)
    reachable = {dest for _, _, dest, _ in LIFECYCLE.moves()} | {"created"}
    assert reachable == set(JOB_STATES)


@pytest.mark.parametrize(
    ("state", "trigger", "changes", "dest"),
    [
        ("created", "hold", {}, "held"),
        ("held", "submit", {}, "submitting"),
        ("submitting", "accept", {"task_id": "t"}, "submitted"),
        ("running", "succeed", {"result_urls": ["u"]}, "succeeded"),
        ("succeeded", "claim_delivery", {}, "delivering"),
        ("delivering", "deliver", {}, "delivered"),
        ("delivered", "charge", {}, "charged"),
        ("running", "fail", {}, "failed"),
    ],
)
def test_legal_moves(state: str, trigger: str, changes: dict[str, Any], dest: str) -> None:
    job = record(state, result_urls=["u"] if state == "succeeded" else [])
    move = LIFECYCLE.plan(job, trigger, NOW, changes)
    assert move is not None and move.dest == dest and state in move.sources


@pytest.mark.parametrize(
    ("state", "trigger", "changes"),
    [
        ("succeeded", "charge", {}),  # never charged before it was delivered
        ("succeeded", "deliver", {}),  # never delivered without a claim
        ("charged", "fail", {}),  # a final state stays final
        ("delivering", "fail", {}),  # a result in hand is never thrown away
        ("submitting", "accept", {}),  # no task id: nothing was accepted
        ("running", "succeed", {}),  # success without a result is not success
    ],
)
def test_illegal_moves_and_false_guards(state: str, trigger: str, changes: dict[str, Any]) -> None:
    assert LIFECYCLE.plan(record(state), trigger, NOW, changes) is None


def test_a_delivery_lease_is_taken_over_only_once_it_ran_out() -> None:
    held = record("delivering", next_check_at=NOW + timedelta(seconds=1))
    assert LIFECYCLE.plan(held, "reclaim_delivery", NOW) is None
    expired = record("delivering", next_check_at=NOW)
    move = LIFECYCLE.plan(expired, "reclaim_delivery", NOW)
    assert move is not None and move.due_by == NOW  # the store re-checks it


def test_trt_jobs_graph_draws_the_table() -> None:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "trt"), "jobs", "graph"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert out.startswith("stateDiagram-v2\n")
    for source, trigger, dest, _ in LIFECYCLE.moves():
        assert f"    {source} --> {dest}: {trigger}" in out
    assert "delivering --> delivering: reclaim_delivery [lease_expired]" in out


async def pass_time(stack: Stack, seconds: float) -> None:
    """As if `seconds` passed for every job's next check (grace, leases). A read, then
    writes: on SQLite that needs the write lock from the start (BEGIN IMMEDIATE, in the
    process's writer queue), or a write of the service in between fails the upgrade."""
    async with write_transaction(stack.product.services.db) as conn:
        rows = (await conn.execute(text("SELECT id, next_check_at FROM jobs"))).all()
        for job_id, at in rows:
            moment = at if isinstance(at, datetime) else datetime.fromisoformat(at)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            await conn.execute(
                text("UPDATE jobs SET next_check_at = :t WHERE id = :i"),
                {"t": moment - timedelta(seconds=seconds), "i": job_id},
            )


async def test_a_slow_delivery_is_not_sent_twice_when_others_step_in(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender is still uploading when the grace period has passed: the poller, a late
    callback and recovery all try the job, and none of them sends it again."""
    real = service_module.deliver_result
    started = asyncio.Event()
    release = asyncio.Event()
    sends: list[int] = []

    async def slow(*args: Any, **kwargs: Any) -> str:
        sends.append(1)
        if len(sends) == 1:  # the first sender is slow; a second one would not wait
            started.set()
            await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(service_module, "deliver_result", slow)
    await fund(stack, 31, RICH)
    chat = stack.chat(31)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    await asyncio.wait_for(started.wait(), 10)

    await pass_time(stack, 61)  # past the grace period, inside the delivery lease
    generation = stack.product.generation
    job = await job_of(stack, 31)
    steps = [generation.check_due(), generation.advance(job.id), generation.advance(job.id)]
    await asyncio.gather(*steps)
    release.set()
    job = await final_job(stack, 31)
    assert job.state == "charged"
    assert sends == [1], "a second sender started while the first was still sending"
    assert len(calls_to(stack, 31, "sendPhoto")) == 1
    assert await available(stack, 31) == RICH - price


async def test_a_result_telegram_fails_to_take_is_sent_again_not_sold_unseen(
    stack: Stack,
) -> None:
    """Telegram answers 5xx to the result: the job is not marked delivered (nor charged)
    until a later pass has sent it."""
    stack.api.inject_error("sendPhoto", 502, "Bad Gateway")
    await fund(stack, 33, RICH)
    chat = stack.chat(33)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 33)
    assert job.state == "charged"
    photos = [c for c in stack.api.calls_of("sendPhoto") if int(c.params["chat_id"]) == 33]
    assert [c.failed for c in photos] == [True, False]
    assert await available(stack, 33) == RICH - price
