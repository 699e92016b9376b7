"""A tap cut off mid-action finishes when Telegram delivers it again (issue 11, defect 5),
over the real stack on SQLite and PostgreSQL.

The engine claims a move before it runs the action, so a redelivery used to find the
menu "out of date" and the action (a paid generation, a promo code) never ran. Now the
claim carries the pending run, and a second delivery of the same callback query (or of
the same message, for an input step) runs it again under the same run key, which the
product's effects are keyed by.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from engine.local.bot_api_server import Call, FakeBotAPI
from engine.registry import Context, Outcome
from engine.store import Snapshot
from flows.payments.settings import PaymentSettings
from storage.conversation_store import SqlStateStore
from storage.db import create_engine
from storage.settings import DatabaseSettings
from tests.harness import Chat, Stack, answer_text, running_stack
from tests.ledger_support import check_invariants
from tests.service_support import product_system_texts, product_texts
from tests.test_generation_e2e import RICH, available, final_job, fund, order, shown_price

SYSTEM = product_system_texts()
STALE = SYSTEM["stale"]["ru"]
APOLOGY = re.compile(
    re.escape(SYSTEM["error"]["ru"]).replace(re.escape("{error_id}"), "[0-9a-f]{6}")
)
RECORDED = "Записано"
ADMIN = 777

# A flow of our own: a plain move, an action to another state, and an input step with an
# action; the product's menus are used below for the generation and the promo code.
_FLOW: dict[str, Any] = {
    "locales": ["ru", "en"],
    "fallback_locale": "en",
    "root": "main",
    "texts": {"recorded": {"ru": RECORDED, "en": "Recorded"}},
    "actions": {"record": {"description": "test"}, "record_word": {"description": "test"}},
    "states": {
        "main": {
            "text": {"ru": "Главное", "en": "Main"},
            "buttons": [
                [{"id": "next", "text": {"ru": "Дальше", "en": "Next"}, "to": "second"}],
                [
                    {
                        "id": "work",
                        "text": {"ru": "Работа", "en": "Work"},
                        "action": "record",
                        "to": "done",
                        "args": {"what": "work"},
                        "set": {"picked": "work"},
                    }
                ],
                [{"id": "ask", "text": {"ru": "Слово", "en": "Word"}, "to": "ask"}],
            ],
        },
        "second": {
            "text": {"ru": "Второй экран", "en": "Second screen"},
            "parent": "main",
            "buttons": [[{"id": "next", "text": {"ru": "Дальше", "en": "Next"}, "to": "done"}]],
        },
        "done": {
            "text": {"ru": "Готово: {picked} {word}", "en": "Done: {picked} {word}"},
            "parent": "main",
        },
        "ask": {
            "text": {"ru": "Введите слово", "en": "Enter a word"},
            "parent": "main",
            "input": {
                "accept": ["text"],
                "store": "word",
                "max_length": 40,
                "next": "done",
                "action": "record_word",
                "example": "hello",
                "error": {"ru": "Слово — от 2 символов", "en": "A word has 2 characters or more"},
            },
        },
    },
}


def resume_flow(directory: Path) -> Path:
    path = directory / "resume_flows.yaml"
    flow = {**_FLOW, "system": SYSTEM, "texts": {**product_texts(), **_FLOW["texts"]}}
    path.write_text(yaml.safe_dump(flow, allow_unicode=True), encoding="utf-8")
    return path


def dropped() -> OperationalError:
    """What SQLAlchemy raises when the connection dies under a statement."""
    return OperationalError(
        "UPDATE conversation_state SET ...",
        {},
        ConnectionResetError("connection reset"),
        connection_invalidated=True,
    )


class Recorder:
    """A test action: each run's key, args and data; fails the next `fail` runs after
    recording them (as an outage after the effect started)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.completed: list[str] = []
        self.seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.fail = 0
        self.delay = 0.0

    async def __call__(self, ctx: Context) -> Outcome:
        self.keys.append(ctx.run_key)
        self.seen.append((ctx.run_key, dict(ctx.args), dict(ctx.data)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise dropped()
        self.completed.append(ctx.run_key)
        return Outcome(notice="recorded")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def stack(
    tmp_path: Path, migrated_database_url: str, recorder: Recorder
) -> AsyncIterator[Stack]:
    actions = {"record": recorder, "record_word": recorder}
    async with running_stack(
        flow_path=resume_flow(tmp_path), db_url=migrated_database_url, actions=actions
    ) as s:
        yield s


async def snapshot(chat: Chat) -> Snapshot:
    snap = await chat.stack.engine.store.load(f"{chat.chat_id}:{chat.chat_id}")
    assert snap is not None
    return snap


def answers(calls: list[Call], query_id: str) -> list[Call]:
    """Every answer attempt for the query, failed ones too (Telegram refuses a second)."""
    return [
        c
        for c in calls
        if c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query_id
    ]


def message_text(stack: Stack, chat_id: int, message_id: int) -> str:
    return str(stack.api.messages[chat_id][message_id].get("text", ""))


async def deliver(stack: Stack, update: dict[str, Any]) -> tuple[int, list[Call]]:
    before = len(stack.api.calls)
    status = await stack.post(update)
    return status, stack.api.calls[before:]


def fail_once(target: Any, name: str, monkeypatch: pytest.MonkeyPatch, *, after: bool) -> list[int]:
    """Makes `target.name` raise a dropped connection once: before it does anything, or
    after it did its work (the answer lost on the way back). Returns a list that counts
    the calls."""
    real: Callable[..., Awaitable[Any]] = getattr(target, name)
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            if after:
                await real(*args, **kwargs)
            raise dropped()
        return await real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


# ------------------------------------------------------------------ (a) the engine's own


async def test_an_action_cut_off_by_an_outage_finishes_on_redelivery(
    stack: Stack, recorder: Recorder
) -> None:
    chat = stack.chat(31)
    await chat.send("/start")
    screen = chat.screen()
    update = stack.api.make_callback_update(31, 31, screen.message_id, screen.data_of("Работа"))
    query_id = update["callback_query"]["id"]
    recorder.fail = 1

    status, first = await deliver(stack, update)
    assert status == 503  # not acknowledged: Telegram delivers it again
    [apology] = answers(first, query_id)
    assert APOLOGY.fullmatch(apology.params["text"]), apology.params
    assert (await snapshot(chat)).state == "main"

    status, second = await deliver(stack, update)
    assert status == 200
    [key] = set(recorder.keys)
    assert recorder.completed == [key]
    # The same args and data on both runs.
    assert [(a, d) for _, a, d in recorder.seen] == [({"what": "work"}, {"picked": "work"})] * 2
    snap = await snapshot(chat)
    assert snap.state == "done"
    assert snap.data.get("picked") == "work"
    assert all(c.params.get("text") != STALE for c in answers(second, query_id))
    assert stack.api.answered_callbacks[query_id] == 1  # the apology; noted as answered
    assert message_text(stack, 31, screen.message_id).startswith("Готово: work")
    assert chat.screen().text.startswith("Готово: work")

    # A third delivery (say the acknowledgement was lost): handled already, nothing runs.
    assert await stack.post(update) == 200
    assert recorder.completed == [key] and len(recorder.keys) == 2


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
async def test_the_move_after_the_action_cut_off_finishes_on_redelivery(
    stack: Stack, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, after_commit: bool
) -> None:
    """The action ran; saving where it led failed (the connection dropped before or after
    the commit). The redelivery neither loses the tap nor calls the menu out of date."""
    chat = stack.chat(32)
    await chat.send("/start")
    screen = chat.screen()
    update = stack.api.make_callback_update(32, 32, screen.message_id, screen.data_of("Работа"))
    query_id = update["callback_query"]["id"]
    store = stack.engine.store
    real_save = store.save
    armed = [True]

    async def save(key: str, snap: Snapshot, expected: int | None) -> bool:
        if armed[0] and snap.state == "done":
            armed[0] = False
            if after_commit:
                await real_save(key, snap, expected)
            raise dropped()
        return await real_save(key, snap, expected)

    monkeypatch.setattr(store, "save", save)

    status, _ = await deliver(stack, update)
    assert status == 503
    status, second = await deliver(stack, update)
    assert status == 200
    assert len(set(recorder.keys)) == 1
    assert (await snapshot(chat)).state == "done"
    assert all(c.params.get("text") != STALE for c in answers(second, query_id))
    assert stack.api.answered_callbacks[query_id] == 1  # the apology, noted as answered
    assert message_text(stack, 32, screen.message_id).startswith("Готово: work")


async def test_an_input_step_cut_off_finishes_on_redelivery(
    stack: Stack, recorder: Recorder
) -> None:
    chat = stack.chat(33)
    await chat.send("/start")
    await chat.tap("Слово")
    update = stack.api.make_message_update(33, 33, "hello")
    recorder.fail = 1
    status, first = await deliver(stack, update)
    assert status == 503
    apologies = [
        c for c in first if c.method == "sendMessage" and APOLOGY.fullmatch(c.params["text"])
    ]
    assert len(apologies) == 1
    assert (await snapshot(chat)).state == "ask"

    status, second = await deliver(stack, update)
    assert status == 200
    [key] = set(recorder.keys)
    assert recorder.completed == [key]
    assert [d for _, _, d in recorder.seen] == [{"word": "hello"}] * 2
    snap = await snapshot(chat)
    assert snap.state == "done" and snap.data.get("word") == "hello"
    sent = [str(c.params["text"]) for c in second if c.method == "sendMessage" and not c.failed]
    assert RECORDED in sent
    assert not any(s.startswith(SYSTEM["stale"]["ru"]) for s in sent)
    assert not any(s.startswith(SYSTEM["unexpected_input"]["ru"]) for s in sent)
    assert chat.screen().text.startswith("Готово:")


async def test_another_tap_drops_a_pending_run(stack: Stack, recorder: Recorder) -> None:
    """The user moved on (another button, /start) before Telegram delivered the cut-off
    tap again: the old tap is out of date, as any other old tap."""
    chat = stack.chat(34)
    await chat.send("/start")
    screen = chat.screen()
    update = stack.api.make_callback_update(34, 34, screen.message_id, screen.data_of("Работа"))
    recorder.fail = 1
    assert (await deliver(stack, update))[0] == 503
    await chat.send("/start")
    await chat.tap("Дальше")
    status, calls = await deliver(stack, update)
    assert status == 200
    # Answered already (the apology): no "out of date" that Telegram would refuse.
    assert answers(calls, update["callback_query"]["id"]) == []
    assert recorder.completed == []
    assert (await snapshot(chat)).state == "second"


# ------------------------------------------------------------------ (d) double taps


async def test_a_double_tap_still_runs_the_action_once(stack: Stack, recorder: Recorder) -> None:
    chat = stack.chat(35)
    await chat.send("/start")
    data = chat.screen().data_of("Работа")
    recorder.delay = 0.05
    results = await asyncio.gather(chat.tap_data(data), chat.tap_data(data))
    assert len(recorder.keys) == 1 and recorder.completed == recorder.keys
    notices = sorted(str(answer_text(calls, qid)) for calls, qid in results)
    assert notices == sorted([RECORDED, STALE])
    assert all(stack.api.answered_callbacks[qid] == 1 for _, qid in results)
    assert (await snapshot(chat)).state == "done"


async def test_a_non_outage_error_is_acknowledged_and_the_tap_can_be_repeated(
    stack: Stack, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is not cured by a redelivery: apology, acknowledged, the screen redrawn with
    fresh buttons; a redelivery of that update does not run the action again."""

    async def broken(ctx: Context) -> Outcome:
        recorder.keys.append(ctx.run_key)
        raise RuntimeError("a bug")

    monkeypatch.setitem(stack.engine.registry.actions, "record", broken)
    chat = stack.chat(36)
    await chat.send("/start")
    screen = chat.screen()
    update = stack.api.make_callback_update(36, 36, screen.message_id, screen.data_of("Работа"))
    status, calls = await deliver(stack, update)
    assert status == 200
    assert APOLOGY.fullmatch(str(answer_text(calls, update["callback_query"]["id"])))
    assert (await snapshot(chat)).state == "main"
    assert await stack.post(update) == 200
    assert len(recorder.keys) == 1
    monkeypatch.setitem(stack.engine.registry.actions, "record", recorder)
    await chat.tap("Работа")
    assert (await snapshot(chat)).state == "done"


async def test_one_update_delivered_to_two_processes_at_once_runs_once_in_effect(
    tmp_path: Path, migrated_database_url: str, recorder: Recorder
) -> None:
    """Telegram gave up on a slow first delivery and a second process got the update too:
    both finish (the loser of the claim runs the action under the same run key, so that
    the tap survives either of them failing), one screen, no "out of date"."""
    url, flow = migrated_database_url, resume_flow(tmp_path)
    actions = {"record": recorder, "record_word": recorder}
    recorder.delay = 0.1
    settings = DatabaseSettings(database_url=url)
    first, second = create_engine(settings), create_engine(settings)
    try:
        async with FakeBotAPI() as api:
            await api.start()
            async with (
                running_stack(
                    SqlStateStore(first), actions=actions, api=api, db_url=url, flow_path=flow
                ) as a,
                running_stack(
                    SqlStateStore(second), actions=actions, api=api, db_url=url, flow_path=flow
                ) as b,
            ):
                chat = a.chat(39)
                await chat.send("/start")
                screen = chat.screen()
                update = api.make_callback_update(
                    39, 39, screen.message_id, screen.data_of("Работа")
                )
                before = len(api.calls)
                assert await asyncio.gather(a.post(update), b.post(update)) == [200, 200]
                assert len(set(recorder.keys)) == 1
                assert (await snapshot(chat)).state == "done"
                query_id = update["callback_query"]["id"]
                texts = [c.params.get("text") for c in answers(api.calls[before:], query_id)]
                assert STALE not in texts
                assert message_text(a, 39, screen.message_id).startswith("Готово: work")
    finally:
        await first.dispose()
        await second.dispose()


# ------------------------------------------------------------------ (b) a paid generation


@pytest.fixture
async def product_stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    settings = PaymentSettings(ADMIN_IDS=str(ADMIN))
    async with running_stack(db_url=migrated_database_url, payment_settings=settings) as s:
        yield s


async def count(stack: Stack, sql: str) -> int:
    async with stack.product.services.db.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


@pytest.mark.parametrize("after", [False, True], ids=["before-start", "after-start"])
async def test_a_generation_cut_off_mid_tap_starts_once_on_redelivery(
    product_stack: Stack, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    stack = product_stack
    user = 37
    await fund(stack, user, RICH)
    chat = stack.chat(user)
    price = await order(chat, "text_to_image")
    assert price == shown_price(chat) and price > 0
    keys: list[str] = []
    real_start = stack.product.generation.start

    async def start(**kwargs: Any) -> Any:
        keys.append(kwargs["key"])
        return await real_start(**kwargs)

    monkeypatch.setattr(stack.product.generation, "start", start)
    fail_once(stack.product.generation, "start", monkeypatch, after=after)
    screen = chat.screen()
    update = stack.api.make_callback_update(
        user, user, screen.message_id, screen.data_of("✅ Создать")
    )
    query_id = update["callback_query"]["id"]

    assert (await deliver(stack, update))[0] == 503
    status, second = await deliver(stack, update)
    assert status == 200
    assert all(c.params.get("text") != STALE for c in answers(second, query_id))
    assert len(set(keys)) == 1
    assert (await snapshot(chat)).state in ("job_started", "job_result")

    job = await final_job(stack, user)  # exactly one job
    assert job.state == "charged"
    assert await count(stack, "SELECT COUNT(*) FROM jobs") == 1
    assert await count(stack, "SELECT COUNT(*) FROM holds") == 1
    assert await available(stack, user) == RICH - price
    await check_invariants(stack.product.services.db)


# ------------------------------------------------------------------ (c) the promo code step


async def test_a_promo_code_cut_off_mid_step_is_applied_once_on_redelivery(
    product_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = product_stack
    assert await stack.post(stack.api.make_message_update(ADMIN, ADMIN, "/promo GIFT 30 5")) == 200
    chat = stack.chat(38)
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("🎟 Промокод")
    calls = fail_once(stack.product.payments, "redeem_promo", monkeypatch, after=False)
    update = stack.api.make_message_update(38, 38, "GIFT")

    status, first = await deliver(stack, update)
    assert status == 503
    assert [c for c in first if c.method == "sendMessage" and APOLOGY.fullmatch(c.params["text"])]
    assert await available(stack, 38) == 0

    status, second = await deliver(stack, update)
    assert status == 200
    assert len(calls) == 2
    assert await available(stack, 38) == 30_00
    assert await count(stack, "SELECT used FROM promo_codes WHERE code = 'GIFT'") == 1
    sent = [str(c.params["text"]) for c in second if c.method == "sendMessage" and not c.failed]
    assert "🎉 Промокод принят!" in sent
    assert (await snapshot(chat)).state == "balance"
    assert await stack.post(update) == 200  # handled: nothing more
    assert await available(stack, 38) == 30_00
    await check_invariants(stack.product.services.db)


@pytest.mark.parametrize("failure", ["5xx", "cut"])
async def test_an_answer_telegram_did_not_take_is_given_by_the_redelivery(
    migrated_database_url: str, failure: str
) -> None:
    """answerCallbackQuery fails for now (5xx, connection cut): the spinner would turn
    forever, so the update is refused and its redelivery answers it; the move is made
    once."""
    async with running_stack(db_url=migrated_database_url) as stack:
        chat = stack.chat(61)
        await chat.send("/start")
        data = chat.screen().data_of("💰 Баланс")
        update = stack.api.make_callback_update(61, 61, chat.screen_message or 0, data)
        query = update["callback_query"]["id"]
        if failure == "5xx":
            stack.api.inject_error("answerCallbackQuery", 502, "Bad Gateway")
        else:
            stack.api.inject_disconnect("answerCallbackQuery")
        assert await stack.post(update) == 503
        await chat.post(update)  # the redelivery: acknowledged (200)
        answers = [
            c for c in stack.api.calls_of("answerCallbackQuery")
            if c.params["callback_query_id"] == query
        ]  # fmt: skip
        assert [c.failed for c in answers] == [True, False]
        assert chat.screen().text.startswith("Баланс")


@pytest.mark.parametrize("failure", ["edit", "action"])
async def test_a_query_answered_before_the_update_was_refused_is_not_answered_again(
    stack: Stack, recorder: Recorder, failure: str
) -> None:
    """The answer reached Telegram, then the delivery was refused (the screen's edit
    failed with a 5xx; the action met an outage and the apology was the answer): the
    redelivery does the rest without a second answer, which Telegram would refuse."""
    chat = stack.chat(62)
    await chat.send("/start")
    button = "Работа" if failure == "action" else "Дальше"
    assert chat.screen_message is not None
    data = chat.screen().data_of(button)
    update = stack.api.make_callback_update(62, 62, chat.screen_message, data)
    query = update["callback_query"]["id"]
    if failure == "edit":
        stack.api.inject_error("editMessageText", 502, "Bad Gateway")
    else:
        recorder.fail = 1
    first, calls = await deliver(stack, update)
    assert first == 503
    assert [c.failed for c in answers(calls, query)] == [False]
    again, calls = await deliver(stack, update)
    assert again == 200
    assert answers(calls, query) == []
    assert [c.method for c in calls if not c.failed][-1] in ("editMessageText", "sendMessage")
    if failure == "action":
        assert len(recorder.keys) == 2 and recorder.completed == recorder.keys[:1]


async def test_a_notice_sent_before_the_update_was_refused_is_not_sent_again(
    stack: Stack, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typed word: the action's notice went out as a message, then the next screen met
    a 5xx; the redelivery shows the screen without a second notice (a campaign finding:
    "promo accepted" told twice)."""
    chat = stack.chat(63)
    await chat.send("/start")
    await chat.tap("Слово")
    real = stack.engine.show

    async def failing_once(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(stack.engine, "show", real)
        stack.api.inject_error("sendMessage", 502, "Bad Gateway")
        await real(*args, **kwargs)

    monkeypatch.setattr(stack.engine, "show", failing_once)
    update = stack.api.make_message_update(63, 63, "hello")
    assert (await deliver(stack, update))[0] == 503
    assert (await deliver(stack, update))[0] == 200
    notices = [
        c for c in stack.api.calls_of("sendMessage")
        if not c.failed and c.params.get("text") == RECORDED
    ]  # fmt: skip
    assert len(notices) == 1
    assert chat.screen().text.startswith("Готово:")
    assert len(recorder.completed) == 1
