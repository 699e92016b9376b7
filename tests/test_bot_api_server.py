"""The fake Bot API against the real aiogram client, and the terminal chat on top of it."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.filters import CommandStart
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    Update,
)

from engine.local.bot_api_server import NOT_MODIFIED, QUERY_TOO_OLD, FakeBotAPI
from engine.local.terminal_chat import run_terminal_chat

TOKEN = "42:TEST"


def keyboard(*rows: list[tuple[str, str]]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=text, callback_data=data) for text, data in row]
            for row in rows
        ]
    )


def same(received: InlineKeyboardMarkup | None, sent: InlineKeyboardMarkup | None) -> bool:
    """Models that came back through a Bot carry it along; compare what was on the wire."""
    assert received is not None and sent is not None
    return received.model_dump(exclude_none=True) == sent.model_dump(exclude_none=True)


def make_bot(api: FakeBotAPI) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api.base_url))
    return Bot(TOKEN, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[Bot]:
    bot = make_bot(api)
    try:
        yield bot
    finally:
        await bot.session.close()


async def test_get_me_takes_the_id_from_the_token(bot: Bot, api: FakeBotAPI) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (42, True, "local_bot")
    assert api.base_url.startswith("http://127.0.0.1:")
    assert await api.start() == api.base_url  # starting again reuses the running server


async def test_send_message_answers_a_full_message(bot: Bot, api: FakeBotAPI) -> None:
    markup = keyboard([("A", "a"), ("B", "b")], [("C", "c")])
    first = await bot.send_message(7, "<b>Hi</b> &amp; welcome", reply_markup=markup)
    second = await bot.send_message(7, "again")
    other = await bot.send_message(8, "elsewhere")

    assert (first.message_id, second.message_id, other.message_id) == (1, 2, 1)
    assert first.chat.id == 7 and first.chat.type == "private"
    assert first.from_user is not None and first.from_user.id == 42
    assert first.text == "Hi & welcome"  # Telegram answers with what it shows
    assert first.entities is not None
    assert [(e.type, e.offset, e.length) for e in first.entities] == [("bold", 0, 2)]
    assert same(first.reply_markup, markup)
    assert second.reply_markup is None
    assert abs(first.date.timestamp() - time.time()) < 5

    call = api.calls_of("sendMessage")[0]
    assert call.params["chat_id"] == 7 and call.params["parse_mode"] == "HTML"
    assert call.params["reply_markup"] == markup.model_dump(exclude_none=True)
    assert not call.failed and call.token == TOKEN
    assert api.messages[7][1]["text"] == "Hi & welcome"
    assert api.messages[7][1]["reply_markup"]["inline_keyboard"][1][0]["callback_data"] == "c"


async def test_edit_updates_the_message_and_an_identical_edit_is_refused(
    bot: Bot, api: FakeBotAPI
) -> None:
    markup = keyboard([("Next", "next")])
    sent = await bot.send_message(7, "one", reply_markup=markup)
    edited = await bot.edit_message_text(
        "two", chat_id=7, message_id=sent.message_id, reply_markup=markup
    )
    assert isinstance(edited, Message)
    assert edited.text == "two" and edited.edit_date is not None
    assert same(edited.reply_markup, markup)
    assert api.messages[7][sent.message_id]["text"] == "two"

    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(
            "two", chat_id=7, message_id=sent.message_id, reply_markup=markup
        )
    assert api.calls[-1].failed and api.calls[-1].result["description"] == NOT_MODIFIED

    # Same text without the keyboard is a change: Telegram drops the keyboard.
    bare = await bot.edit_message_text("two", chat_id=7, message_id=sent.message_id)
    assert isinstance(bare, Message) and bare.reply_markup is None
    assert "reply_markup" not in api.messages[7][sent.message_id]
    restored = await bot.edit_message_reply_markup(
        chat_id=7, message_id=sent.message_id, reply_markup=markup
    )
    assert isinstance(restored, Message) and same(restored.reply_markup, markup)


async def test_edit_of_an_unknown_message_is_refused(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=7, message_id=99)


async def test_html_that_telegram_cannot_parse_is_refused(bot: Bot, api: FakeBotAPI) -> None:
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(7, "<b>bold")
    with pytest.raises(TelegramBadRequest, match="Unsupported start tag"):
        await bot.send_message(7, "<script>x</script>")
    assert 7 not in api.messages


async def test_texts_over_telegrams_limits_are_refused(bot: Bot, api: FakeBotAPI) -> None:
    """4096 UTF-16 code units for a text, 1024 for a caption, counted after the markup."""
    assert (await bot.send_message(7, "<b>" + "я" * 4096 + "</b>")).text == "я" * 4096
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(7, "я" * 4097)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(7, "😀" * 2049)  # two code units each
    picture = BufferedInputFile(b"\x89PNG\r\n\x1a\n" + bytes(64), filename="p.png")
    with pytest.raises(TelegramBadRequest, match="caption is too long"):
        await bot.send_photo(7, picture, caption="x" * 1025)
    assert len(api.messages[7]) == 1


async def test_callback_data_over_64_bytes_is_refused(bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(7, "menu", reply_markup=keyboard([("long", "x" * 65)]))


async def test_a_callback_query_can_be_answered_only_once(bot: Bot, api: FakeBotAPI) -> None:
    sent = await bot.send_message(7, "menu", reply_markup=keyboard([("Go", "go")]))
    update = api.make_callback_update(7, 7, sent.message_id, "go")
    query_id = update["callback_query"]["id"]

    assert await bot.answer_callback_query(query_id, text="done") is True
    with pytest.raises(TelegramBadRequest, match="query is too old") as caught:
        await bot.answer_callback_query(query_id)
    assert QUERY_TOO_OLD.endswith(caught.value.message)
    assert api.answered_callbacks[query_id] == 2
    assert [c.failed for c in api.calls_of("answerCallbackQuery")] == [False, True]


@pytest.mark.parametrize(
    ("code", "description", "error"),
    [
        (403, "Forbidden: bot was blocked by the user", TelegramForbiddenError),
        (429, "Too Many Requests: retry after 7", TelegramRetryAfter),
        (500, "Internal Server Error", TelegramServerError),
        (502, "Bad Gateway", TelegramServerError),
    ],
)
async def test_injected_errors_raise_the_matching_aiogram_exception(
    bot: Bot, api: FakeBotAPI, code: int, description: str, error: type[TelegramAPIError]
) -> None:
    api.inject_error("sendMessage", code, description, retry_after=7 if code == 429 else None)
    with pytest.raises(error) as caught:
        await bot.send_message(7, "hello")
    if isinstance(caught.value, TelegramRetryAfter):
        assert caught.value.retry_after == 7
    assert description in str(caught.value)
    failed = api.calls_of("sendMessage")[-1]
    assert failed.failed and failed.result["error_code"] == code
    assert 7 not in api.messages

    message = await bot.send_message(7, "hello")  # the error was for one call only
    assert message.message_id == 1


async def test_an_error_injected_twice_fails_two_calls(bot: Bot, api: FakeBotAPI) -> None:
    api.inject_error("answerCallbackQuery", 400, "Bad Request: query is too old", times=2)
    for _ in range(2):
        with pytest.raises(TelegramBadRequest):
            await bot.answer_callback_query("q1")
    assert await bot.answer_callback_query("q1") is True
    assert api.answered_callbacks["q1"] == 3


async def test_get_updates_honours_offset_and_timeout(bot: Bot, api: FakeBotAPI) -> None:
    pushed = [api.push_update(api.make_message_update(7, 7, f"m{i}")) for i in range(3)]
    ids = [u["update_id"] for u in pushed]

    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == ids
    assert [u.message.text for u in updates if u.message] == ["m0", "m1", "m2"]

    updates = await bot.get_updates(offset=ids[1] + 1, timeout=0)
    assert [u.update_id for u in updates] == ids[2:]
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == ids[2:]  # still unconfirmed

    started = time.monotonic()
    assert await bot.get_updates(offset=ids[2] + 1, timeout=1) == []
    assert 0.9 <= time.monotonic() - started < 3

    waiting = asyncio.create_task(bot.get_updates(offset=ids[2] + 1, timeout=10))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    late = api.push_update({"message": api.make_message_update(7, 7, "late")["message"]})
    updates = await waiting
    assert [u.update_id for u in updates] == [late["update_id"]]
    assert time.monotonic() - started < 1


async def test_a_long_poll_ends_when_the_server_stops(bot: Bot, api: FakeBotAPI) -> None:
    waiting = asyncio.create_task(bot.get_updates(timeout=30))
    await api.wait_for_call("getUpdates")
    started = time.monotonic()
    await api.stop()
    assert await waiting == []
    assert time.monotonic() - started < 2


async def test_unknown_methods_fail_and_names_are_case_insensitive(api: FakeBotAPI) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}/bot{TOKEN}/noSuchMethod", data={"a": "1"}) as resp:
            assert resp.status == 404
            assert await resp.json() == {
                "ok": False,
                "error_code": 404,
                "description": "Not Found: method not found",
            }
        body = {"chat_id": 5, "text": "json body", "reply_markup": {"inline_keyboard": []}}
        async with http.post(f"{api.base_url}/bot{TOKEN}/SENDMESSAGE", json=body) as resp:
            answer = await resp.json()
    assert answer["ok"] is True and answer["result"]["text"] == "json body"
    assert [c.method for c in api.calls] == ["noSuchMethod", "sendMessage"]
    assert api.calls[0].failed and not api.calls[1].failed


async def test_a_photo_uploads_as_multipart(bot: Bot, api: FakeBotAPI) -> None:
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    sent = await bot.send_photo(
        7, BufferedInputFile(picture, filename="cat.png"), caption="<i>look</i>"
    )
    assert sent.photo is not None and sent.caption == "look"
    assert sent.caption_entities is not None and sent.caption_entities[0].type == "italic"
    call = api.calls_of("sendPhoto")[0]
    assert str(call.params["photo"]).startswith("attach://")
    [upload] = call.files.values()
    assert upload.data == picture and upload.filename == "cat.png"

    file = await bot.get_file(sent.photo[-1].file_id)
    assert file.file_size == len(picture) and file.file_path
    again = await bot.send_photo(8, sent.photo[-1].file_id)  # a file_id is reused, not re-uploaded
    assert again.photo is not None and again.photo[-1].file_id == sent.photo[-1].file_id


async def test_other_sends_are_shaped_like_telegram(bot: Bot, api: FakeBotAPI) -> None:
    doc = await bot.send_document(7, BufferedInputFile(b"%PDF-1.4", filename="a.pdf"))
    assert doc.document is not None and doc.document.file_name == "a.pdf"
    video = await bot.send_video(7, "https://example.com/v.mp4", duration=9)
    assert video.video is not None and video.video.duration == 9
    invoice = await bot.send_invoice(
        7,
        title="Stars",
        description="100 stars",
        payload="order-1",
        currency="XTR",
        prices=[LabeledPrice(label="Stars", amount=100)],
    )
    assert invoice.invoice is not None and invoice.invoice.total_amount == 100
    assert api.calls_of("sendInvoice")[0].params["prices"] == [{"label": "Stars", "amount": 100}]
    assert await bot.delete_message(7, doc.message_id) is True
    assert doc.message_id not in api.messages[7]
    assert await bot.refund_star_payment(7, "charge-1") is True
    assert await bot.answer_pre_checkout_query("pcq-1", ok=True) is True
    assert (await bot.get_webhook_info()).url == ""


async def test_builders_make_updates_aiogram_accepts(bot: Bot, api: FakeBotAPI) -> None:
    sent = await bot.send_message(7, "menu", reply_markup=keyboard([("Go", "go")]))
    updates = [
        api.make_message_update(7, 7, "/start", language_code="en"),
        api.make_callback_update(7, 7, sent.message_id, "go"),
        api.make_callback_update(7, 7, 999, "old"),
        api.make_photo_update(7, 7, caption="mine"),
        api.make_document_update(7, 7, mime_type="image/png", file_size=123, file_name="a.png"),
        api.make_video_update(7, 7, duration=3),
        api.make_audio_update(7, 7),
    ]
    parsed = [Update.model_validate(u, context={"bot": bot}) for u in updates]
    assert len({u.update_id for u in parsed}) == len(parsed)

    start, tap, old_tap, photo, document, video, audio = parsed
    assert start.message is not None and start.message.text == "/start"
    assert start.message.from_user is not None and start.message.from_user.language_code == "en"
    assert tap.callback_query is not None and isinstance(tap.callback_query.message, Message)
    assert same(tap.callback_query.message.reply_markup, sent.reply_markup)
    assert old_tap.callback_query is not None and old_tap.callback_query.message is not None
    assert old_tap.callback_query.message.message_id == 999
    assert tap.callback_query.id != old_tap.callback_query.id
    assert photo.message is not None and photo.message.photo and photo.message.caption == "mine"
    assert document.message is not None and document.message.document is not None
    assert document.message.document.mime_type == "image/png"
    assert document.message.document.file_size == 123
    assert video.message is not None and video.message.video is not None
    assert audio.message is not None and audio.message.audio is not None
    file = await bot.get_file(photo.message.photo[-1].file_id)
    assert file.file_id == photo.message.photo[-1].file_id


async def test_wait_for_call_sees_background_work(bot: Bot, api: FakeBotAPI) -> None:
    async def later() -> None:
        await asyncio.sleep(0.1)
        await bot.send_message(7, "done")

    task = asyncio.create_task(later())
    call = await api.wait_for_call("sendMessage", lambda c: c.params["text"] == "done")
    await task
    assert call.result["text"] == "done"
    with pytest.raises(TimeoutError):
        await api.wait_for_call("sendMessage", lambda c: c.params["text"] == "never", timeout=0.2)
    api.clear()
    assert api.calls == [] and api.messages[7]  # the chat keeps its messages


async def test_terminal_chat_shows_the_bot_and_presses_buttons(api: FakeBotAPI) -> None:
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer(
            "<b>Pick</b> a colour", reply_markup=keyboard([("Red", "red"), ("Blue", "blue")])
        )

    @router.callback_query(F.data)
    async def pick(query: CallbackQuery) -> None:
        await query.answer("noted")
        assert isinstance(query.message, Message)
        await query.message.edit_text(f"You picked {query.data}")

    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    bot = make_bot(api)
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_signals=False, polling_timeout=1)
    )
    output = io.StringIO()
    try:
        script = io.StringIO("/start\n1\n")
        await asyncio.wait_for(run_terminal_chat(api, 5, 5, input_stream=script, output=output), 30)
    finally:
        await dispatcher.stop_polling()
        await polling
        await bot.session.close()

    text = output.getvalue()
    assert "> /start\nbot: Pick a colour\n  [1] Red  [2] Blue\n" in text
    assert "> 1\n  (notice: noted)\nbot (edited): You picked red\n" in text
    [query_id] = api.answered_callbacks
    assert api.answered_callbacks[query_id] == 1
    assert api.messages[5][2]["text"] == "You picked red"
