"""Database round trips of a navigation tap, counted at the driver (not timed).

A tap on a menu button of a conversation this process has in memory is one statement,
the compare-and-set that moves it (storage.conversation_store, processed_updates). One
it has not (after a restart, or pushed out of memory) first reads twice in one
statement: was the update handled before? and the conversation. The ids of handled
updates are written behind, the taps of an interval in one INSERT. Nothing else
reaches the database for a screen without data providers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import conversation_store, processed_updates
from storage.ledger import Ledger
from storage.one_statement import statement_engines
from storage.users import find_account
from tests.harness import Chat, Stack, running_stack

MENU = ["🆓 Бесплатные модели", "« Назад", "❓ Помощь", "≡ Главное меню"]


@pytest.fixture
async def stack(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    # Handled ids wait for `write_records`, not for a timer that could fire mid-tap.
    monkeypatch.setattr(processed_updates, "FLUSH_EVERY_S", 3600)
    # The job poller and hold sweeper would query between taps: after their first pass
    # at start-up, which the taps wait for, they wait an hour.
    first_pass = asyncio.Event()
    sweep = Ledger.expire_due

    async def expire_due(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        try:
            return await sweep(self, *args, **kwargs)
        finally:
            first_pass.set()  # the last step of a pass

    monkeypatch.setattr(Ledger, "expire_due", expire_due)
    async with running_stack(db_url=migrated_database_url, poll_interval_s=3600) as s:
        await asyncio.wait_for(first_pass.wait(), 10)
        yield s


@contextmanager
def statements(db: AsyncEngine) -> Iterator[list[str]]:
    """Every statement sent, but the BEGIN/COMMIT/ROLLBACK around them."""
    sent: list[str] = []

    def record(_c: object, _cur: object, sql: str, *_: object) -> None:
        if sql.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            sent.append(" ".join(sql.split()))

    engines = statement_engines(db)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


async def test_a_menu_tap_is_one_move(stack: Stack) -> None:
    chat = stack.chat(501)
    await chat.send("/start")
    db = stack.product.services.db
    for label in MENU:
        with statements(db) as sent:
            await chat.tap(label)
        assert [s.split()[:2] for s in sent] == [["UPDATE", "conversation_state"]], (label, sent)


async def test_a_tap_on_a_conversation_not_in_memory_reads_it_with_the_update_check(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conversation_store, "CACHE_SIZE", 0)  # as after a restart
    chat = stack.chat(502)
    await chat.send("/start")
    db = stack.product.services.db
    for label in MENU:
        with statements(db) as sent:
            await chat.tap(label)
        kinds = [s.split()[0] for s in sent]
        assert kinds == ["SELECT", "UPDATE"], (label, sent)
        assert "processed_updates" in sent[0] and "conversation_state" in sent[0]
        assert sent[1].startswith("UPDATE conversation_state")


async def test_a_tap_delivered_again_is_known_without_a_read(stack: Stack) -> None:
    chat = stack.chat(503)
    await chat.send("/start")
    update = stack.api.make_callback_update(
        503, 503, chat.screen_message, chat.screen().data_of(MENU[0]), language_code="ru"
    )
    await chat.post(update)
    shown = chat.screen()
    await stack.write_records()  # written, and still known to this process
    db = stack.product.services.db
    with statements(db) as sent:
        calls = await chat.post(update)  # Telegram did not get our answer: again
    assert sent == [] and calls == [] and chat.screen() == shown


async def test_taps_that_finish_together_share_the_record(stack: Stack) -> None:
    chats = [stack.chat(600 + i) for i in range(12)]
    for chat in chats:
        await chat.send("/start")
    db = stack.product.services.db

    async def taps(chat: Chat) -> None:
        for label in MENU:
            await chat.tap(label)

    with statements(db) as sent:
        await asyncio.gather(*(taps(c) for c in chats))
        await stack.write_records()
    taps_made = len(chats) * len(MENU)
    records = [s for s in sent if s.startswith("INSERT INTO processed_updates")]
    assert sum(s.startswith("UPDATE conversation_state") for s in sent) == taps_made
    assert not any("FROM processed_updates" in s for s in sent)  # none looked up
    assert len(sent) == taps_made + len(records)
    assert len(records) == 1, (len(records), taps_made)


async def test_a_first_start_writes_the_user_and_account_in_one_transaction(stack: Stack) -> None:
    db = stack.product.services.db
    with statements(db) as sent:
        await stack.chat(702).send("/start")
    made = [s for s in sent if "accounts" in s or s.startswith("INSERT INTO users")]
    # Is there an account? Then the user and the account, the id coming back: not read.
    assert [s.split()[0] for s in made] == ["SELECT", "INSERT", "INSERT"], made
    assert "RETURNING" in made[-1], made[-1]
    assert await find_account(db, 702) is not None


async def test_a_returning_users_start_writes_no_user_or_account(stack: Stack) -> None:
    chat = stack.chat(701)
    await chat.send("/start")
    db = stack.product.services.db
    with statements(db) as sent:
        await chat.send("/start")
    writes = [s for s in sent if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    # The move to the main menu and the note of the message that shows it; the user,
    # the account and the user's "active" mark are read, not written.
    assert [w.split()[:2] for w in writes] == [["UPDATE", "conversation_state"]] * 2, writes
    assert any("FROM accounts" in s for s in sent)
    assert any(s.startswith("SELECT users.is_active") for s in sent), sent
    assert chat.screen().text  # and the menu is shown as before
