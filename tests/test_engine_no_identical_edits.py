"""No edit of a message to the content it already shows (issue 11, defect 7), over the
real stack on SQLite and PostgreSQL.

A double tap, a stale tap or a tap on an old message shows the current screen on the
tapped message; when that message shows it already, Telegram refuses the edit with
"message is not modified". The engine remembers what it put into which message and
does not ask.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram.types import User

from engine import callback_data
from engine.local.bot_api_server import Call, FakeBotAPI
from engine.runtime import Where
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.settings import DatabaseSettings
from tests.harness import Chat, Stack, answer_text, running_stack
from tests.test_engine_resume import STALE, Recorder, resume_flow, snapshot


@pytest.fixture
async def stack(tmp_path: Path, migrated_database_url: str) -> AsyncIterator[Stack]:
    recorder = Recorder()
    actions = {"record": recorder, "record_word": recorder}
    async with running_stack(
        flow_path=resume_flow(tmp_path), db_url=migrated_database_url, actions=actions
    ) as s:
        yield s


def not_modified(stack: Stack) -> list[Call]:
    return [
        c
        for c in stack.api.calls_of("editMessageText")
        if c.failed and "not modified" in str(c.result)
    ]


async def shows_current(chat: Chat, message_id: int) -> None:
    """The message holds the conversation's current screen: its text and buttons of the
    current counter."""
    snap = await snapshot(chat)
    message = chat.api.messages[chat.chat_id][message_id]
    user = User(id=chat.chat_id, is_bot=False, first_name="-", language_code="ru")
    where = Where(chat.stack.product.bot, chat.chat_id, user)
    screen = await chat.stack.engine.screen(where, snap)
    assert message["text"] == screen.text.replace("<b>", "").replace("</b>", "")
    for row in message["reply_markup"]["inline_keyboard"]:
        for button in row:
            tap = callback_data.decode(button["callback_data"])
            assert tap is not None and callback_data.same_counter(tap, snap.counter)


async def test_a_double_tap_does_not_edit_to_the_same_screen(stack: Stack) -> None:
    chat = stack.chat(51)
    await chat.send("/start")
    mid = chat.screen().message_id
    data = chat.screen().data_of("Дальше")
    await chat.tap_data(data)
    calls, qid = await chat.tap_data(data)  # the second tap of a double tap
    assert answer_text(calls, qid) == STALE
    assert [c for c in calls if c.method == "editMessageText"] == []
    assert not_modified(stack) == []
    await shows_current(chat, mid)


async def test_a_double_tap_on_an_action_does_not_edit_to_the_same_screen(stack: Stack) -> None:
    chat = stack.chat(52)
    await chat.send("/start")
    mid = chat.screen().message_id
    data = chat.screen().data_of("Работа")
    await chat.tap_data(data)
    await chat.tap_data(data)
    assert not_modified(stack) == []
    await shows_current(chat, mid)


async def test_taps_at_once_edit_the_message_once(stack: Stack) -> None:
    chat = stack.chat(53)
    await chat.send("/start")
    mid = chat.screen().message_id
    data = chat.screen().data_of("Дальше")
    results = await asyncio.gather(*(chat.tap_data(data) for _ in range(4)))
    assert all(stack.api.answered_callbacks[qid] == 1 for _, qid in results)
    assert not_modified(stack) == []
    await shows_current(chat, mid)


async def test_taps_on_old_messages_edit_each_once(stack: Stack) -> None:
    chat = stack.chat(54)
    await chat.send("/start")
    old = chat.screen()
    await chat.send("/start")
    new = chat.screen()
    assert new.message_id != old.message_id
    # The old message shows an old screen: it is brought up to date, once.
    for _ in range(3):
        calls, qid = await chat.tap_data(old.data_of("Дальше"), message_id=old.message_id)
        assert answer_text(calls, qid) == STALE
    edits = [
        c
        for c in stack.api.calls_of("editMessageText")
        if int(c.params["message_id"]) == old.message_id
    ]
    assert len(edits) == 1
    await shows_current(chat, old.message_id)
    # The new one moves on; both old ones, tapped again, follow once each.
    await chat.tap_data(new.data_of("Дальше"), message_id=new.message_id)
    for _ in range(2):
        await chat.tap_data(old.data_of("Дальше"), message_id=old.message_id)
        await chat.tap_data(new.data_of("Дальше"), message_id=new.message_id)
    assert not_modified(stack) == []
    await shows_current(chat, old.message_id)
    await shows_current(chat, new.message_id)
    assert (await snapshot(chat)).state == "second"


async def test_malformed_data_on_a_fresh_message_does_not_edit_it(stack: Stack) -> None:
    chat = stack.chat(55)
    await chat.send("/start")
    mid = chat.screen().message_id
    for data in ("garbage", "zz99:1:next"):
        calls, qid = await chat.tap_data(data)
        assert answer_text(calls, qid) == STALE
    assert not_modified(stack) == []
    await shows_current(chat, mid)


async def test_a_double_tap_on_a_screen_sent_after_input(stack: Stack) -> None:
    chat = stack.chat(56)
    await chat.send("/start")
    await chat.tap("Слово")
    await chat.send("hello")
    mid = chat.screen().message_id
    data = chat.screen().flat()[0][1]  # Back
    await chat.tap_data(data)
    await chat.tap_data(data)
    assert not_modified(stack) == []
    await shows_current(chat, mid)


async def test_random_taps_on_current_and_old_messages(stack: Stack) -> None:
    """Like the load run that found the defect: taps on the current screen, repeated
    taps, taps on old messages and /start, in a seeded random order."""
    rng = random.Random(7)
    chat = stack.chat(57)
    await chat.send("/start")
    seen: list[tuple[int, str]] = []  # (message, data) of every button ever shown
    starts = 0
    for _ in range(120):
        screen = chat.screen()
        seen.extend((screen.message_id, d) for _, d in screen.flat())
        roll = rng.random()
        if roll < 0.03 and starts < 4:
            starts += 1
            await chat.send("/start")
            continue
        if roll < 0.5:
            mid, data = screen.message_id, rng.choice(screen.flat())[1]
        else:
            mid, data = rng.choice(seen)
        if (await snapshot(chat)).state == "ask":
            await chat.send("hello")
            continue
        taps = 2 if rng.random() < 0.3 else 1
        for _ in range(taps):
            await chat.tap_data(data, message_id=mid)
    assert not_modified(stack) == []
    await shows_current(chat, chat.screen().message_id)


async def test_a_double_tap_split_across_two_processes(
    tmp_path: Path, migrated_database_url: str
) -> None:
    """What the engine remembers is in the database, so the process that gets the second
    tap knows what the first one put on the message."""
    url, flow = migrated_database_url, resume_flow(tmp_path)
    settings = DatabaseSettings(database_url=url)
    first, second = create_engine(settings), create_engine(settings)
    try:
        async with FakeBotAPI() as api:
            await api.start()
            async with (
                running_stack(SqlStateStore(first), api=api, db_url=url, flow_path=flow) as a,
                running_stack(SqlStateStore(second), api=api, db_url=url, flow_path=flow) as b,
            ):
                chat_a, chat_b = a.chat(58), b.chat(58)
                await chat_a.send("/start")
                screen = chat_a.screen()
                data = screen.data_of("Дальше")
                await chat_a.tap_data(data, message_id=screen.message_id)
                await chat_b.tap_data(data, message_id=screen.message_id)
                await chat_b.tap_data("garbage", message_id=screen.message_id)
                await chat_a.tap_data(data, message_id=screen.message_id)
                assert not_modified(a) == []
                await shows_current(chat_a, screen.message_id)
    finally:
        await first.dispose()
        await second.dispose()
