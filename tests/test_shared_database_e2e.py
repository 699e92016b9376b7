"""Conversation state in SQL: two processes on one database, and restarts.

Two stacks here are two dispatchers with their own engines, event isolation
and connection pools, sharing only the database and the fake Telegram, as two
instances behind one webhook would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.local.bot_api_server import FakeBotAPI
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.settings import DatabaseSettings
from tests.harness import Stack, answer_text, running_stack
from tests.test_engine_e2e import PACKAGE, RU, counting_actions, to_packages


@pytest.fixture
async def two_engines(migrated_database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    settings = DatabaseSettings(database_url=migrated_database_url)
    first, second = create_engine(settings), create_engine(settings)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def test_double_tap_across_two_instances_runs_the_action_once(
    two_engines: tuple[AsyncEngine, AsyncEngine], migrated_database_url: str
) -> None:
    url = migrated_database_url
    runs: list[int] = []
    async with FakeBotAPI() as api:
        await api.start()
        actions = counting_actions(runs, delay=0.05)
        async with (
            running_stack(SqlStateStore(two_engines[0]), actions=actions, api=api, db_url=url) as a,
            running_stack(SqlStateStore(two_engines[1]), actions=actions, api=api, db_url=url) as b,
        ):
            chat_a, chat_b = a.chat(21), b.chat(21)
            await to_packages(chat_a)
            screen = chat_a.screen()
            data = screen.data_of(PACKAGE)
            results = await asyncio.gather(
                *(
                    chat.tap_data(data, message_id=screen.message_id)
                    for chat in (chat_a, chat_b, chat_a, chat_b)
                )
            )
            assert runs == [21]
            notices = [answer_text(calls, qid) for calls, qid in results]
            assert notices.count(RU.texts["param_saved"]["ru"]) == 1
            assert notices.count(RU.system.stale["ru"]) == 3
            assert all(api.answered_callbacks[qid] == 1 for _, qid in results)


async def test_state_survives_a_restart(migrated_database_url: str) -> None:
    settings = DatabaseSettings(database_url=migrated_database_url)
    async with FakeBotAPI() as api:
        await api.start()
        first = create_engine(settings)
        async with running_stack(
            SqlStateStore(first), api=api, db_url=migrated_database_url
        ) as before:
            chat = before.chat(22)
            await chat.send("/start")
            await chat.tap("❓ Помощь")
            screen = chat.screen()
        await first.dispose()

        second = create_engine(settings)
        try:
            async with running_stack(
                SqlStateStore(second), api=api, db_url=migrated_database_url
            ) as after:
                again = after.chat(22)
                again.screen_message = screen.message_id
                calls = await again.tap(RU.system.back["ru"])
                assert answer_text(calls) is None  # a plain move, no stale notice
                assert again.screen().text.startswith("Главное меню")
                snap = await after.engine.store.load("22:22")
                assert snap is not None and snap.state == "main"
        finally:
            await second.dispose()


@pytest.fixture
async def two_instances(
    two_engines: tuple[AsyncEngine, AsyncEngine], migrated_database_url: str
) -> AsyncIterator[tuple[FakeBotAPI, Stack, Stack]]:
    """Two instances with the product's actions behind one fake Telegram."""
    url = migrated_database_url
    async with FakeBotAPI() as api:
        await api.start()
        async with (
            running_stack(SqlStateStore(two_engines[0]), api=api, db_url=url) as a,
            running_stack(SqlStateStore(two_engines[1]), api=api, db_url=url) as b,
        ):
            yield api, a, b


async def test_an_instance_whose_copy_is_behind_moves_from_the_stored_row(
    two_instances: tuple[FakeBotAPI, Stack, Stack],
) -> None:
    """Each instance keeps the conversations it touched in memory; a tap the other
    instance moved past is decided on the row, not on the copy."""
    _, a, b = two_instances
    on_a, on_b = a.chat(23), b.chat(23)
    await on_a.send("/start")
    await on_a.tap("❓ Помощь")  # a's copy: the help screen
    await on_b.tap(RU.system.back["ru"])  # b moves on: a's copy is behind
    assert on_a.screen().text.startswith("Главное меню")

    calls = await on_a.tap("❓ Помощь")  # a button of the screen b showed
    assert answer_text(calls) is None  # a plain move, not "out of date"
    assert on_a.screen().text == on_b.screen().text
    assert not on_a.screen().text.startswith("Главное меню")
    stored = await a.engine.store.load("23:23", fresh=True)
    assert stored is not None and stored.state == "help"


async def test_a_tap_the_other_instance_handled_is_not_moved_again(
    two_instances: tuple[FakeBotAPI, Stack, Stack],
) -> None:
    """Telegram delivers a tap again to another instance (the first one's answer was
    lost): the copy the second instance has is behind, its move fails, and the row
    says the tap was handled: the same screen again, nothing moved twice."""
    api, a, b = two_instances
    on_a = a.chat(24)
    await on_a.send("/start")
    await on_a.tap("❓ Помощь")
    help_screen = on_a.screen()
    update = api.make_callback_update(
        24, 24, help_screen.message_id, help_screen.data_of(RU.system.back["ru"])
    )
    assert await b.post(update) == 200
    moved = await b.engine.store.load("24:24", fresh=True)
    assert moved is not None and moved.state == "main"
    sent_before = len(api.calls_of("sendMessage"))

    assert await a.post(update) == 200  # the same update, to a's stale copy
    after = await a.engine.store.load("24:24", fresh=True)
    assert after == moved  # not moved again (nor marked stale)
    assert len(api.calls_of("sendMessage")) == sent_before
    assert on_a.screen().text.startswith("Главное меню")
    query = update["callback_query"]["id"]
    answers = [
        c.params.get("text")
        for c in api.calls_of("answerCallbackQuery")
        if c.params["callback_query_id"] == query
    ]
    # Answered as the first time (Telegram keeps the first answer of a query).
    assert answers == [None, None], answers
