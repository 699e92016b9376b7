"""The webhook's promises over the real stack: forged requests get nothing, a redelivered
update has no second effect, and an update is never acknowledged unless handled, so a
database outage loses nothing (on SQLite and on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from engine.registry import Context, Outcome
from engine.store import MemoryStore
from storage import conversation_store
from storage.processed_updates import ProcessedUpdates
from tests.harness import SECRET, Chat, Stack, running_stack
from tests.service_support import (
    MAIN_TEXT,
    SECOND_TEXT,
    Outage,
    mini_flow,
    product_system_texts,
    sample,
)
from trt.polling import next_offset

ERROR_TEXT = product_system_texts()["error"]["ru"]
APOLOGY = re.compile(re.escape(ERROR_TEXT).replace(re.escape("{error_id}"), "[0-9a-f]{6}"))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(flow_path=mini_flow(tmp_path)) as s:
        yield s


async def state_of(chat: Chat) -> tuple[str, int]:
    snap = await chat.stack.engine.store.load(f"{chat.chat_id}:{chat.chat_id}")
    assert snap is not None
    return snap.state, snap.counter


def tap_update(chat: Chat, label: str) -> dict[str, Any]:
    screen = chat.screen()
    return chat.api.make_callback_update(
        chat.chat_id, chat.chat_id, screen.message_id, screen.data_of(label)
    )


async def test_forged_or_missing_secret_gets_401_and_nothing_is_stored(stack: Stack) -> None:
    update = stack.api.make_message_update(5, 5, "/start")
    processed = ProcessedUpdates(stack.product.services.db)
    for forged in ("wrong", None, "", SECRET + "x", SECRET[:-1]):
        assert await stack.post(update, secret=forged) == 401, forged
    assert stack.api.calls_of("sendMessage") == []
    assert not await processed.seen(update["update_id"])
    assert await stack.post(update) == 200
    assert len(stack.api.calls_of("sendMessage")) == 1
    await stack.write_records()
    assert await processed.seen(update["update_id"])


async def test_a_body_that_is_not_an_update_is_refused_and_not_recorded(stack: Stack) -> None:
    for body in ({"update_id": "x"}, {"no": "id"}):
        assert await stack.post(body) == 400
    async with stack.http.post(
        stack.url + "/telegram/webhook",
        data=b"{not json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    ) as resp:
        assert resp.status == 400
    assert stack.api.calls == []


async def test_a_redelivered_update_is_acknowledged_without_a_second_effect(stack: Stack) -> None:
    chat = stack.chat(6)
    await chat.send("/start")
    update = tap_update(chat, "Дальше")
    assert await stack.post(update) == 200
    moved = await state_of(chat)
    assert moved[0] == "second"
    duplicates = sample("trt_updates_total", type="callback_query", outcome="duplicate")
    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    assert stack.api.calls[before:] == []
    assert await state_of(chat) == moved
    assert sample("trt_updates_total", type="callback_query", outcome="duplicate") == (
        duplicates + 1
    )


async def test_deliveries_of_one_update_at_once_run_it_once(tmp_path: Path) -> None:
    runs: list[int] = []

    async def work(ctx: Context) -> Outcome:
        runs.append(ctx.user_id)
        await asyncio.sleep(0.2)
        return Outcome(notice="done")

    async with running_stack(
        MemoryStore(), flow_path=mini_flow(tmp_path), actions={"work": work}
    ) as stack:
        chat = stack.chat(7)
        await chat.send("/start")
        update = tap_update(chat, "Работа")
        statuses = await asyncio.gather(*(stack.post(update) for _ in range(3)))
        assert statuses == [200, 200, 200]
        assert runs == [7]
        # One answer: the later deliveries waited for the first instead of running again.
        assert stack.api.answered_callbacks[update["callback_query"]["id"]] == 1


# ------------------------------------------------------------------ the database goes away


@pytest.fixture
async def outage_stack(
    request: pytest.FixtureRequest, migrated_database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Stack, Outage]]:
    admin = (
        request.getfixturevalue("postgres_admin_url")
        if migrated_database_url.startswith("postgresql")
        else None
    )
    # The flow is read at start-up, before any outage takes tmp_path (SQLite's directory).
    flow = mini_flow(tmp_path)
    async with running_stack(flow_path=flow, db_url=migrated_database_url) as stack:
        outage = Outage(migrated_database_url, stack.product.services.db, admin)
        try:
            yield stack, outage
        finally:
            await outage.stop()


async def readiness(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with stack.http.get(stack.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_with_the_database_down_the_update_is_refused_then_handled_once(
    outage_stack: tuple[Stack, Outage],
) -> None:
    stack, outage = outage_stack
    chat = stack.chat(8)
    await chat.send("/start")
    assert (await readiness(stack))[0] == 200
    update = tap_update(chat, "Дальше")
    await outage.start()
    before = len(stack.api.calls)
    assert await stack.post(update) == 503
    # The conversation is in memory, so the tap reaches its move, which the database
    # refuses: nothing is written, the user is told at once (no spinning button).
    [apology] = stack.api.calls[before:]
    assert apology.method == "answerCallbackQuery" and apology.params["show_alert"]
    assert apology.params["callback_query_id"] == update["callback_query"]["id"]
    status, body = await readiness(stack)
    assert status == 503 and any("database unreachable" in r for r in body["reasons"])
    await outage.stop()
    assert (await readiness(stack))[0] == 200
    assert await stack.post(update) == 200  # Telegram's redelivery
    assert await state_of(chat) == ("second", 2)
    assert chat.screen().text == SECOND_TEXT
    before = len(stack.api.calls)
    assert await stack.post(update) == 200
    assert stack.api.calls[before:] == []
    assert await state_of(chat) == ("second", 2)


async def test_a_tap_of_a_conversation_not_in_memory_is_refused_before_anything_is_done(
    outage_stack: tuple[Stack, Outage], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversation_store, "CACHE_SIZE", 0)  # as after a restart
    stack, outage = outage_stack
    chat = stack.chat(10)
    await chat.send("/start")
    update = tap_update(chat, "Дальше")
    await outage.start()
    before = len(stack.api.calls)
    assert await stack.post(update) == 503
    assert stack.api.calls[before:] == []  # its first read failed: nothing was done
    await outage.stop()
    assert await stack.post(update) == 200
    assert await state_of(chat) == ("second", 2)


class StopTheDatabaseOnce(BaseMiddleware):
    """Takes the database away after the update was accepted, before the engine reads."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage
        self.armed = True

    async def __call__(self, handler: Any, event: TelegramObject, data: dict[str, Any]) -> Any:
        if self.armed:
            self.armed = False
            await self.outage.start()
        return await handler(event, data)


async def test_the_database_stopping_during_an_update_loses_nothing(
    outage_stack: tuple[Stack, Outage],
) -> None:
    stack, outage = outage_stack
    chat = stack.chat(9)
    await chat.send("/start")
    assert await state_of(chat) == ("main", 1)
    update = tap_update(chat, "Дальше")
    query_id = update["callback_query"]["id"]
    stack.product.dispatcher.update.outer_middleware(StopTheDatabaseOnce(outage))
    unavailable = sample("trt_updates_total", type="callback_query", outcome="unavailable")

    assert await stack.post(update) == 503
    # The user was told at once; the update was not acknowledged.
    answers = [
        c
        for c in stack.api.calls_of("answerCallbackQuery")
        if c.params["callback_query_id"] == query_id
    ]
    assert len(answers) == 1 and APOLOGY.fullmatch(answers[0].params["text"])
    assert sample("trt_updates_total", type="callback_query", outcome="unavailable") == (
        unavailable + 1
    )
    assert (await readiness(stack))[0] == 503

    await outage.stop()
    assert (await readiness(stack))[0] == 200
    assert chat.screen().text == MAIN_TEXT
    assert await stack.post(update) == 200  # redelivered once the database is back
    assert await state_of(chat) == ("second", 2)
    assert chat.screen().text == SECOND_TEXT
    before = len(stack.api.calls)
    assert await stack.post(update) == 200  # and once more: no second effect
    assert stack.api.calls[before:] == []
    assert await state_of(chat) == ("second", 2)


def test_polling_confirms_only_up_to_the_first_update_not_handled() -> None:
    updates = [Update(update_id=n) for n in (10, 11, 12, 13)]
    assert next_offset(updates, [True, True, True, True], None) == 14
    assert next_offset(updates, [True, False, True, True], None) == 11
    assert next_offset(updates, [False, True, True, True], 10) == 10
