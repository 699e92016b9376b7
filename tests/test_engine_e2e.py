"""The engine's promises under abuse, through the real stack: stale and double taps,
malformed data, failing actions, unexpected and invalid input, forged webhooks.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.loader import parse_flow
from engine.registry import Action, Context, Outcome
from engine.store import MemoryStore
from pricing.catalog import load_catalog
from pricing.money import rub
from tests.harness import ROOT, SECRET, Chat, Stack, answer_text, running_stack

SOURCE = (ROOT / "flows.yaml").read_text(encoding="utf-8")
RU = parse_flow(SOURCE).spec


def counting_actions(
    runs: list[int], *, fail: bool = False, delay: float = 0.0
) -> dict[str, Action]:
    """A `buy_package` action in place of the product's, that counts its runs."""

    async def buy_package(ctx: Context) -> Outcome:
        runs.append(ctx.user_id)
        if delay:
            await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("payment provider is down")
        return Outcome(notice="param_saved")

    return {"buy_package": buy_package}


PACKAGE = "150 ₽ за 100 ⭐"


async def to_packages(chat: Chat) -> None:
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    await chat.tap("💳 Пополнить")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(MemoryStore()) as s:
        yield s


async def state_of(chat: Chat) -> str:
    snap = await chat.stack.engine.store.load(f"{chat.chat_id}:{chat.chat_id}")
    assert snap is not None
    return snap.state


async def test_start_shows_main_menu_in_the_users_language(stack: Stack) -> None:
    ru, en = stack.chat(1, "ru"), stack.chat(2, "en")
    await ru.send("/start")
    await en.send("/start")
    assert ru.screen().text.startswith("Главное меню")
    assert en.screen().text.startswith("Main menu")
    assert ["🆓 Бесплатные модели"] == [t for t, _ in ru.screen().buttons[0]]


async def test_stale_tap_on_an_old_screen_shows_the_current_one(stack: Stack) -> None:
    chat = stack.chat(3)
    await chat.send("/start")
    old = chat.screen()
    await chat.tap("❓ Помощь")
    assert await state_of(chat) == "help"
    # The same old main-menu button again: the screen has moved on.
    calls, _ = await chat.tap_data(old.data_of("💰 Баланс"), message_id=old.message_id)
    assert answer_text(calls) == RU.system.stale["ru"]
    assert await state_of(chat) == "help"
    assert chat.screen().text.startswith("Помощь")


async def test_button_from_an_old_deploy_is_stale(stack: Stack) -> None:
    chat = stack.chat(4)
    await chat.send("/start")
    data = chat.screen().data_of("❓ Помощь")
    old_version = "zz99" + data[4:]
    calls, _ = await chat.tap_data(old_version)
    assert answer_text(calls) == RU.system.stale["ru"]
    assert await state_of(chat) == "main"


async def test_a_new_start_makes_older_messages_stale(stack: Stack) -> None:
    chat = stack.chat(5)
    await chat.send("/start")
    first = chat.screen()
    await chat.send("/start")
    assert chat.screen().message_id != first.message_id
    calls, _ = await chat.tap_data(first.data_of("❓ Помощь"), message_id=first.message_id)
    assert answer_text(calls) == RU.system.stale["ru"]
    assert await state_of(chat) == "main"


@pytest.mark.parametrize(
    "data", ["", "garbage", "a:b", "x" * 64, "ab12:zzzzzzzzz:help", "v:1:#:no-such-option"]
)
async def test_malformed_callback_data_is_answered_and_shows_the_screen(
    stack: Stack, data: str
) -> None:
    chat = stack.chat(6)
    await chat.send("/start")
    calls, _ = await chat.tap_data(data)
    assert answer_text(calls) == RU.system.stale["ru"]
    assert await state_of(chat) == "main"


async def test_forged_option_value_is_refused(stack: Stack) -> None:
    chat = stack.chat(7)
    await chat.send("/start")
    await chat.tap("🖼 Текст → фото")
    option = next(d for _, d in chat.screen().flat() if ":#:" in d)
    forged = option.rsplit(":", 1)[0] + ":not-a-model"
    calls, _ = await chat.tap_data(forged)
    assert answer_text(calls) == RU.system.stale["ru"]
    assert await state_of(chat) == "models"


async def test_double_tap_racing_itself_runs_the_action_once() -> None:
    runs: list[int] = []
    async with running_stack(MemoryStore(), actions=counting_actions(runs, delay=0.05)) as s:
        chat = s.chat(8)
        await to_packages(chat)
        data = chat.screen().data_of(PACKAGE)
        results = await asyncio.gather(*(chat.tap_data(data) for _ in range(5)))
        assert runs == [8]
        notices = sorted(str(answer_text(calls, qid)) for calls, qid in results)
        assert notices.count(RU.system.stale["ru"]) == 4
        assert notices.count(RU.texts["param_saved"]["ru"]) == 1
        assert all(s.api.answered_callbacks[qid] == 1 for _, qid in results)


async def test_an_action_that_raises_gets_an_error_id_and_keeps_the_state() -> None:
    runs: list[int] = []
    async with running_stack(MemoryStore(), actions=counting_actions(runs, fail=True)) as s:
        chat = s.chat(9)
        await to_packages(chat)
        calls = await chat.tap(PACKAGE)
        text = answer_text(calls)
        assert text is not None
        assert re.fullmatch(r"Что-то пошло не так \(код [0-9a-f]{6}\)\. Попробуйте ещё раз\.", text)
        assert await state_of(chat) == "topup"
        # The screen was redrawn with fresh buttons, so the user can try again.
        calls = await chat.tap(PACKAGE)
        assert runs == [9, 9]


async def test_unimplemented_action_says_coming_soon(stack: Stack) -> None:
    # An action flows.yaml declares but Python does not implement (yet).
    stack.engine.registry.actions.pop("buy_package")
    chat = stack.chat(10)
    await to_packages(chat)
    calls = await chat.tap(PACKAGE)
    assert answer_text(calls) == RU.system.coming_soon["ru"]
    assert await state_of(chat) == "topup"


async def test_text_where_a_button_is_expected_gets_a_hint_and_the_buttons(stack: Stack) -> None:
    chat = stack.chat(11)
    await chat.send("/start")
    calls = await chat.send("hello?")
    sent = [c for c in calls if c.method == "sendMessage"]
    assert len(sent) == 1
    assert sent[0].params["text"].startswith(RU.system.unexpected_input["ru"])
    assert "Главное меню" in chat.screen().text
    # The repeated screen's buttons work.
    await chat.tap("❓ Помощь")
    assert await state_of(chat) == "help"


async def go_to_prompt(chat: Chat) -> None:
    await chat.send("/start")
    await chat.tap("🖼 Текст → фото")
    await chat.tap("Flux 2 Flex")
    await chat.tap("▶️ Начать")
    assert await state_of(chat) == "prompt"


@pytest.mark.parametrize("text", ["ab", "x" * 2001])
async def test_invalid_text_input_stays_in_the_step(stack: Stack, text: str) -> None:
    chat = stack.chat(12)
    await go_to_prompt(chat)
    calls = await chat.send(text)
    sent = [c for c in calls if c.method == "sendMessage"]
    assert sent and sent[0].params["text"].startswith(RU.states["prompt"].input.error["ru"])  # type: ignore[union-attr]
    assert await state_of(chat) == "prompt"
    await chat.send("a lighthouse at dawn")
    assert await state_of(chat) == "confirm"
    assert "a lighthouse at dawn" in chat.screen().text


async def test_user_text_is_escaped_in_html_screens(stack: Stack) -> None:
    chat = stack.chat(13)
    await go_to_prompt(chat)
    calls = await chat.send("<b>bold</b> & co")
    sent = [c for c in calls if c.method == "sendMessage"][-1]
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in sent.params["text"]


async def test_wrong_file_type_in_an_image_step(stack: Stack) -> None:
    chat = stack.chat(14)
    await chat.send("/start")
    await chat.tap("🎨 Фото → фото")
    await chat.tap("Flux 2 Flex (по фото)")
    await chat.tap("▶️ Начать")
    assert await state_of(chat) == "image"
    pdf = chat.api.make_document_update(
        chat.chat_id, chat.chat_id, mime_type="application/pdf", file_size=1000, file_name="a.pdf"
    )
    await chat.post(pdf)
    assert await state_of(chat) == "image"
    huge = chat.api.make_document_update(
        chat.chat_id, chat.chat_id, mime_type="image/png", file_size=50 * 2**20, file_name="a.png"
    )
    await chat.post(huge)
    assert await state_of(chat) == "image"
    await chat.post(chat.api.make_photo_update(chat.chat_id, chat.chat_id))
    assert await state_of(chat) == "prompt"


async def test_parameter_choice_is_stored_and_priced(stack: Stack) -> None:
    chat = stack.chat(15)
    await chat.send("/start")
    await chat.tap("🖼 Текст → фото")
    await chat.tap("Flux 2 Flex")
    # Prices as the price file says today: an editor's price change breaks no test here.
    flex = next(
        m for m in load_catalog().by_kind("text_to_image") if m.title["ru"] == "Flux 2 Flex"
    )
    assert f"Цена: {rub(flex.price_kopecks({}), 'ru')}" in chat.screen().text
    await chat.tap("⚙️ Параметры")
    await chat.tap("Разрешение: 1K")
    calls = await chat.tap("2K")
    assert answer_text(calls) == RU.texts["param_saved"]["ru"]
    assert "Разрешение: 2K" in [t for t, _ in chat.screen().flat()]
    await chat.tap(RU.system.back["ru"])
    assert f"Цена: {rub(flex.price_kopecks({'resolution': '2K'}), 'ru')}" in chat.screen().text


async def test_back_and_main_menu(stack: Stack) -> None:
    chat = stack.chat(16)
    await chat.send("/start")
    await chat.tap("🎬 Текст → видео")
    await chat.tap("Wan 2.6")
    await chat.tap("⚙️ Параметры")
    await chat.tap(RU.system.back["ru"])
    assert await state_of(chat) == "model"
    await chat.tap(RU.system.main_menu["ru"])
    assert await state_of(chat) == "main"


async def test_forged_or_missing_webhook_secret_is_refused(stack: Stack) -> None:
    update = stack.api.make_message_update(17, 17, "/start")
    assert await stack.post(update, secret="wrong") == 401
    assert await stack.post(update, secret=None) == 401
    assert stack.api.calls_of("sendMessage") == []
    assert await stack.post(update, secret=SECRET) == 200
    assert len(stack.api.calls_of("sendMessage")) == 1


async def test_telegram_error_on_edit_falls_back_to_a_new_message(stack: Stack) -> None:
    chat = stack.chat(18)
    await chat.send("/start")
    stack.api.inject_error("editMessageText", 400, "Bad Request: message can't be edited")
    calls = await chat.tap("❓ Помощь")
    assert [c.method for c in calls if c.method in ("editMessageText", "sendMessage")] == [
        "editMessageText",
        "sendMessage",
    ]
    assert chat.screen().text.startswith("Помощь")


async def test_answer_failure_does_not_hide_the_move(stack: Stack) -> None:
    chat = stack.chat(19)
    await chat.send("/start")
    stack.api.inject_error("answerCallbackQuery", 400, "Bad Request: query is too old")
    update: dict[str, Any] = stack.api.make_callback_update(
        19, 19, chat.screen().message_id, chat.screen().data_of("❓ Помощь")
    )
    await chat.post(update)
    assert await state_of(chat) == "help"
    assert stack.api.answered_callbacks[update["callback_query"]["id"]] == 1


REFUSAL = "Bad Request: can't parse entities: Can't find end tag corresponding to start tag b"


async def test_a_screen_telegram_refuses_leaves_the_user_where_they_were(stack: Stack) -> None:
    """Telegram refuses the next screen (its parser found what ours did not): the move is
    undone, the user gets the error text with an id above the screen they were on, its
    buttons work, and the tap is answered once; nothing says "out of date" later."""
    chat = stack.chat(23)
    await chat.send("/start")
    before = chat.screen()
    stack.api.inject_error("editMessageText", 400, REFUSAL)
    stack.api.inject_error("sendMessage", 400, REFUSAL)
    calls = await chat.tap("❓ Помощь")
    assert await state_of(chat) == "main"
    answers = [c for c in calls if c.method == "answerCallbackQuery"]
    assert len(answers) == 1 and not answers[0].failed
    shown = chat.screen()
    assert shown.message_id != before.message_id
    assert re.match(r"Что-то пошло не так \(код [0-9a-f]{6}\)", shown.text), shown.text
    assert "Главное меню" in shown.text
    await chat.tap("❓ Помощь")  # the buttons of the screen shown with the error work
    assert await state_of(chat) == "help"
    assert chat.screen().text.startswith("Помощь")


async def test_an_input_whose_next_screen_is_refused_stays_on_the_input(stack: Stack) -> None:
    chat = stack.chat(24)
    await chat.send("/start")
    await chat.tap("🆓 Бесплатные модели")
    await chat.tap(chat.screen().buttons[0][0][0])
    await chat.tap("▶️ Начать")
    prompt_state = await state_of(chat)
    stack.api.inject_error("sendMessage", 400, REFUSAL)
    await chat.send("a red fox in the snow")
    assert await state_of(chat) == prompt_state
    assert re.match(r"Что-то пошло не так \(код [0-9a-f]{6}\)", chat.screen().text)
    await chat.send("a red fox in the snow")  # typed again: now it goes on
    assert chat.screen().text.startswith("Проверьте заказ")


async def test_help_is_a_command_that_opens_its_screen_from_anywhere(stack: Stack) -> None:
    """`commands: {help: help}` in flows.yaml: /help shows the help screen as a new
    message; its Back goes where the help state's parent says, older screens go stale."""
    chat = stack.chat(25)
    await chat.send("/start")
    await chat.tap("💰 Баланс")
    old = chat.screen()
    await chat.send("/help")
    assert await state_of(chat) == "help"
    assert chat.screen().message_id != old.message_id
    assert chat.screen().text.startswith("Помощь")
    calls, _ = await chat.tap_data(old.data_of("« Назад"), message_id=old.message_id)
    assert answer_text(calls) == RU.system.stale["ru"]
    await chat.tap("« Назад")
    assert await state_of(chat) == "main"
