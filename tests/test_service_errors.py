"""No silent failures, over the real stack: an exception anywhere becomes an apology with an
error id and a log line with its traceback and ids; Telegram's refusals are handled by kind.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.local.bot_api_server import NOT_MODIFIED
from engine.registry import Context, Outcome
from storage.models import User, table_of
from storage.users import ensure_user
from tests.harness import Chat, Stack, answer_text, running_stack
from tests.service_support import (
    MAIN_TEXT,
    SECOND_TEXT,
    captured_logs,
    mini_flow,
    product_system_texts,
    sample,
)

ERROR_TEXT = product_system_texts()["error"]["ru"]
APOLOGY = re.compile(re.escape(ERROR_TEXT).replace(re.escape("{error_id}"), "([0-9a-f]{6})"))


async def boom(ctx: Context) -> Outcome:
    raise RuntimeError("the payment provider is down")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(flow_path=mini_flow(tmp_path), actions={"boom": boom}) as s:
        yield s


async def state_of(chat: Chat) -> tuple[str, int]:
    snap = await chat.stack.engine.store.load(f"{chat.chat_id}:{chat.chat_id}")
    assert snap is not None
    return snap.state, snap.counter


async def is_active(stack: Stack, user_id: int) -> bool:
    users = table_of(User)
    async with stack.product.services.db.connect() as conn:
        found = await conn.scalar(select(users.c.is_active).where(users.c.id == user_id))
    assert found is not None
    return bool(found)


def screens(chat: Chat, calls: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [
        (c.method, c.params["text"])
        for c in calls
        if c.method in ("sendMessage", "editMessageText") and not c.failed
    ]


# ------------------------------------------------------------------ one error path


async def test_an_exception_in_an_action_gets_an_apology_an_id_and_a_logged_traceback(
    stack: Stack,
) -> None:
    chat = stack.chat(21)
    await chat.send("/start")
    before = await state_of(chat)
    with captured_logs() as logs:
        calls, query_id = await chat.tap_data(chat.screen().data_of("Сломать"))
    shown = answer_text(calls, query_id)
    assert shown is not None
    found = APOLOGY.fullmatch(shown)
    assert found, shown
    error_id = found.group(1)
    # The state did not move; the screen was redrawn so the user can try again.
    state, _ = await state_of(chat)
    assert state == before[0] and chat.screen().text == MAIN_TEXT
    assert stack.api.answered_callbacks[query_id] == 1
    [line] = [x for x in logs.lines() if error_id in x["event"]]
    assert line["level"] == "error"
    assert "RuntimeError: the payment provider is down" in line["exception"]
    assert line["user_id"] == 21 and line["chat_id"] == 21 and line["state"] == "main"
    assert isinstance(line["update_id"], int)
    [done] = [x for x in logs.lines() if x["event"].startswith("update ")]
    assert done["outcome"] == "error" and done["update_id"] == line["update_id"]


async def test_a_failing_message_handler_still_gets_the_user_an_apology(stack: Stack) -> None:
    """Telegram failing on its side (5xx) while the screen is sent: the user gets an
    apology, and the update is refused (503) so that Telegram delivers it again, which
    then shows the screen."""
    chat = stack.chat(22)
    stack.api.inject_error("sendMessage", 500, "Internal Server Error: try later")
    errors = sample("trt_errors_total", kind="exception")
    update = stack.api.make_message_update(22, 22, "/start")
    before = len(stack.api.calls)
    assert await stack.post(update) == 503
    sent = [c for c in stack.api.calls[before:] if c.method == "sendMessage" and not c.failed]
    assert len(sent) == 1 and APOLOGY.fullmatch(sent[0].params["text"])
    assert sample("trt_errors_total", kind="exception") == errors + 1
    assert sample("trt_errors_total", kind="telegram_server") >= 1
    await chat.post(update)
    assert chat.screen().text == MAIN_TEXT


# ------------------------------------------------------------------ Telegram errors by kind


async def test_a_user_who_blocked_the_bot_is_marked_inactive_and_back_on_start(
    stack: Stack,
) -> None:
    await ensure_user(stack.product.services.db, 23)
    chat = stack.chat(23)
    forbidden = sample("trt_errors_total", kind="telegram_forbidden")
    stack.api.inject_error("sendMessage", 403, "Forbidden: bot was blocked by the user")
    with captured_logs() as logs:
        calls = await chat.send("/start")
    assert [c.failed for c in calls if c.method == "sendMessage"] == [True]  # no apology try
    assert not await is_active(stack, 23)
    assert sample("trt_errors_total", kind="telegram_forbidden") == forbidden + 1
    assert not [x for x in logs.lines() if x["level"] == "error"]
    await chat.send("/start")
    assert await is_active(stack, 23)
    assert chat.screen().text == MAIN_TEXT


async def test_too_many_requests_waits_retry_after_and_sends_again(stack: Stack) -> None:
    chat = stack.chat(24)
    await chat.send("/start")
    stack.api.inject_error(
        "editMessageText", 429, "Too Many Requests: retry after 1", retry_after=1
    )
    calls, query_id = await chat.tap_data(chat.screen().data_of("Дальше"))
    edits = [c for c in calls if c.method == "editMessageText"]
    assert [e.failed for e in edits] == [True, False]
    assert edits[1].at - edits[0].at >= 1.0
    assert chat.screen().text == SECOND_TEXT
    assert answer_text(calls, query_id) is None  # no apology


async def test_message_is_not_modified_is_ignored(stack: Stack) -> None:
    chat = stack.chat(25)
    await chat.send("/start")
    stack.api.inject_error("editMessageText", 400, NOT_MODIFIED)
    ignored = sample("trt_errors_total", kind="telegram_not_modified")
    with captured_logs() as logs:
        calls, query_id = await chat.tap_data(chat.screen().data_of("Дальше"))
    assert [c.method for c in calls if c.method in ("editMessageText", "sendMessage")] == [
        "editMessageText"
    ]
    assert answer_text(calls, query_id) is None
    assert stack.api.answered_callbacks[query_id] == 1
    assert await state_of(chat) == ("second", 2)
    assert sample("trt_errors_total", kind="telegram_not_modified") == ignored + 1
    assert not [x for x in logs.lines() if x["level"] in ("warning", "error")]


async def test_a_message_that_cannot_be_edited_is_sent_anew(stack: Stack) -> None:
    chat = stack.chat(26)
    await chat.send("/start")
    stack.api.inject_error("editMessageText", 400, "Bad Request: message can't be edited")
    cant = sample("trt_errors_total", kind="telegram_cant_edit")
    calls, _ = await chat.tap_data(chat.screen().data_of("Дальше"))
    assert screens(chat, calls) == [("sendMessage", SECOND_TEXT)]
    assert chat.screen().text == SECOND_TEXT
    assert sample("trt_errors_total", kind="telegram_cant_edit") == cant + 1
