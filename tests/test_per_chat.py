"""What the dispatcher keeps per chat: nothing once the chat's updates are done.

aiogram's in-memory event isolation and FSM storage kept a lock and a record for every
chat ever seen, so `trt serve`'s memory grew with each new user (trt/per_chat.py).
"""

from __future__ import annotations

import asyncio

import pytest
from aiogram.fsm.storage.base import StorageKey

from tests.harness import Stack, running_stack
from trt.per_chat import ChatLocks, NoFsmStorage


def key(chat: int) -> StorageKey:
    return StorageKey(bot_id=1, chat_id=chat, user_id=chat)


async def test_one_update_at_a_time_per_chat_and_no_lock_kept() -> None:
    locks = ChatLocks()
    events: list[str] = []

    async def update(chat: int, name: str, hold: asyncio.Event | None = None) -> None:
        async with locks.lock(key(chat)):
            events.append(f"{name} in")
            if hold is not None:
                await hold.wait()
            events.append(f"{name} out")

    hold = asyncio.Event()
    first = asyncio.create_task(update(1, "a", hold))
    await asyncio.sleep(0)
    second = asyncio.create_task(update(1, "b"))  # same chat: waits for a
    other = asyncio.create_task(update(2, "c"))  # another chat: does not
    await other
    assert events == ["a in", "c in", "c out"]
    assert locks.chats == 1  # chat 1 only: a holds, b waits
    hold.set()
    await asyncio.gather(first, second)
    assert events[3:] == ["a out", "b in", "b out"]
    assert locks.chats == 0


async def test_an_update_cancelled_while_waiting_leaves_no_lock() -> None:
    locks = ChatLocks()
    hold = asyncio.Event()

    async def holder() -> None:
        async with locks.lock(key(7)):
            await hold.wait()

    async def waiter() -> None:
        async with locks.lock(key(7)):
            raise AssertionError("cancelled before it could run")

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert locks.chats == 1
    hold.set()
    await holding
    assert locks.chats == 0


async def test_the_fsm_storage_keeps_nothing_and_refuses_state() -> None:
    storage = NoFsmStorage()
    assert await storage.get_state(key(1)) is None
    assert await storage.get_data(key(1)) == {}
    await storage.set_state(key(1), None)
    await storage.set_data(key(1), {})
    with pytest.raises(NotImplementedError):
        await storage.set_state(key(1), "menu")
    with pytest.raises(NotImplementedError):
        await storage.set_data(key(1), {"a": 1})


async def test_many_users_leave_nothing_behind_in_the_dispatcher() -> None:
    async with running_stack() as stack:
        await asyncio.gather(*(visit(stack, 900 + n) for n in range(40)))
        fsm = stack.product.dispatcher.fsm
        assert isinstance(fsm.storage, NoFsmStorage)
        assert isinstance(fsm.events_isolation, ChatLocks)
        assert fsm.events_isolation.chats == 0


async def visit(stack: Stack, user: int) -> None:
    chat = stack.chat(user)
    await chat.send("/start")
    await chat.tap("❓ Помощь")
    assert chat.screen().text
