"""The person's side of a local chat: the terminal stands in for the Telegram app.

The bot long-polls a `FakeBotAPI`; what it sends is read back from the
server's call log, and what the person types becomes updates pushed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from engine.local.bot_api_server import Call, FakeBotAPI

SHOWN = frozenset(
    "sendMessage editMessageText editMessageCaption editMessageReplyMarkup sendPhoto sendVideo"
    " sendAudio sendDocument sendAnimation sendInvoice".split()
)
MEDIA = ("photo", "video", "audio", "animation", "document")
QUIET = 0.3  # seconds without a new call after which a scripted line counts as answered
SETTLE_LIMIT = 15.0  # but never wait longer than this for one line
WAIT_LIMIT = 60.0  # how long `:wait` waits for the bot to speak up
HELP = (
    "Type text or /start to send it; a number presses that button of the latest keyboard"
    " (\\5 sends the text 5); :photo sends a photo; :wait waits for the bot's next message"
    " (a result that takes a while); :pay pays the last invoice; :lang en (or ru) switches"
    " language; :quit, EOF or Ctrl-C ends."
)
Pending = Callable[[], Awaitable[bool]]


class _Transcript:
    """Prints the bot's side in call order and remembers the latest keyboard to press."""

    def __init__(self, api: FakeBotAPI, chat_id: int, output: TextIO) -> None:
        self.api, self.chat_id, self.output = api, chat_id, output
        self.cursor = len(api.calls)
        self.keyboard_message: int | None = None
        self.buttons: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(text, file=self.output, flush=True)

    def flush(self) -> None:
        calls, self.cursor = self.api.calls[self.cursor :], len(self.api.calls)
        for call in calls:
            if not call.failed:
                self._show(call)

    def _show(self, call: Call) -> None:
        if call.method == "answerCallbackQuery" and call.params.get("text"):
            kind = "alert" if call.params.get("show_alert") else "notice"
            self.say(f"  ({kind}: {call.params['text']})")
        message = call.result
        if call.method not in SHOWN or not isinstance(message, dict):
            return
        if message.get("chat", {}).get("id") != self.chat_id:
            return
        label = "bot (edited)" if call.method.startswith("edit") else "bot"
        tags = [f"[{kind}] " for kind in MEDIA if kind in message][:1]
        if invoice := message.get("invoice"):
            amount = f"{invoice['total_amount']} {invoice['currency']}"
            tags.append(f"[invoice: {invoice['title']}, {amount}] ")
        lines = [f"{label}: {''.join(tags)}{message.get('text') or message.get('caption') or ''}"]
        rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
        if rows:
            self.keyboard_message, self.buttons = message["message_id"], []
            for row in rows:
                cells = []
                for button in row:
                    self.buttons.append(button)
                    cells.append(f"[{len(self.buttons)}] {button.get('text', '')}")
                lines.append("  " + "  ".join(cells))
        elif message["message_id"] == self.keyboard_message:
            self.keyboard_message, self.buttons = None, []
        self.say("\n".join(lines))

    def press(self, number: int) -> str | None:
        """The callback data of button `number`, or None after saying why it cannot be pressed."""
        if not 1 <= number <= len(self.buttons):
            self.say(f"  (no button [{number}]; the latest keyboard has {len(self.buttons)})")
            return None
        button = self.buttons[number - 1]
        if "callback_data" not in button:
            target = button.get("url") or "something only the Telegram app can do"
            self.say(f"  (button [{number}] opens {target})")
            return None
        return str(button["callback_data"])


async def _read_line(stream: TextIO) -> str:
    """Reads in a daemon thread: one blocked on a terminal must not hold up the exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def deliver(line: str, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(line)

    def read() -> None:
        try:
            line, error = stream.readline(), None
        except Exception as exc:  # handed to the awaiting coroutine
            line, error = "", exc
        with contextlib.suppress(RuntimeError):  # the loop may be gone by now
            loop.call_soon_threadsafe(deliver, line, error)

    threading.Thread(target=read, name="terminal-chat-input", daemon=True).start()
    return await future


def _offset(call: Call) -> int:
    try:
        return int(call.params.get("offset") or 0)
    except (TypeError, ValueError):
        return 0


async def _settle(api: FakeBotAPI, update_id: int) -> None:
    """Waits until the bot has taken the update and then gone quiet, so scripts print in order."""
    # The poll after the one that carried the update confirms it with a higher offset.
    with contextlib.suppress(TimeoutError):
        await api.wait_for_call("getUpdates", lambda c: _offset(c) > update_id, SETTLE_LIMIT)
    await _settle_quiet(api)


async def _next_message(api: FakeBotAPI, transcript: _Transcript) -> None:
    """Waits for the bot to send something on its own (a finished job), then to go quiet."""
    seen = len(api.calls)
    with contextlib.suppress(TimeoutError):
        await api.wait_for_call(None, lambda c: c.method in SHOWN, WAIT_LIMIT, since=seen)
    await _settle_quiet(api)
    transcript.flush()


async def _settle_quiet(api: FakeBotAPI) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_LIMIT
    seen = len(api.calls)
    while (remaining := deadline - loop.time()) > 0:
        try:
            await api.wait_for_call(
                None, lambda c: c.method != "getUpdates", min(QUIET, remaining), since=seen
            )
        except TimeoutError:
            return
        seen = len(api.calls)


def _update_for(
    api: FakeBotAPI, transcript: _Transcript, chat_id: int, user_id: int, text: str, lang: str
) -> dict[str, Any] | None:
    if text == ":photo":
        return api.make_photo_update(chat_id, user_id, language_code=lang)
    if text.isdigit() and transcript.buttons:
        data = transcript.press(int(text))
        if data is None or transcript.keyboard_message is None:
            return None
        return api.make_callback_update(chat_id, user_id, transcript.keyboard_message, data, lang)
    return api.make_message_update(chat_id, user_id, text.removeprefix("\\"), lang)


async def _pay(
    api: FakeBotAPI,
    transcript: _Transcript,
    chat_id: int,
    user_id: int,
    language_code: str,
    interactive: bool,
) -> None:
    """What Telegram does when the person pays the latest invoice: a pre-checkout query,
    and if the bot says yes, a successful payment."""
    invoices = [
        c
        for c in api.calls_of("sendInvoice")
        if not c.failed and str(c.params.get("chat_id")) == str(chat_id)
    ]
    if not invoices:
        transcript.say("  (no invoice to pay: choose a top-up package first)")
        return
    invoice = invoices[-1].params
    payload, currency = str(invoice["payload"]), str(invoice["currency"])
    prices = invoice.get("prices") or []
    total = sum(int(p["amount"]) for p in prices if isinstance(p, dict))
    seen = len(api.calls)
    query = api.make_pre_checkout_update(user_id, payload, currency, total, language_code)
    api.push_update(query)
    await _settle(api, query["update_id"])
    answers = [c for c in api.calls[seen:] if c.method == "answerPreCheckoutQuery"]
    if not answers or answers[-1].params.get("ok") in (False, "false"):
        reason = answers[-1].params.get("error_message") if answers else "no answer"
        transcript.say(f"  (payment refused: {reason})")
        return
    paid = api.make_successful_payment_update(
        chat_id,
        user_id,
        payload,
        currency,
        total,
        charge_id=f"local-charge-{query['update_id']}",
        language_code=language_code,
    )
    transcript.say(f"  (paid {total} {currency})")
    api.push_update(paid)
    await _settle(api, paid["update_id"])
    if not interactive:
        transcript.flush()


async def _follow(transcript: _Transcript) -> None:
    while True:
        transcript.flush()
        await asyncio.sleep(0.1)


async def run_terminal_chat(
    api: FakeBotAPI,
    chat_id: int,
    user_id: int,
    *,
    language_code: str = "ru",
    input_stream: TextIO | None = None,
    output: TextIO | None = None,
    pending: Pending | None = None,
) -> None:
    """Chats with the bot polling `api` until `:quit` or end of input.

    At a terminal the bot's messages print as they come. Piped input is a
    script: each line waits for the bot's answer, so the output is the same
    on every run. `pending` says whether the bot has work under way for this chat
    (a job), so that `:wait` with nothing coming says so at once.
    """
    # The process's streams as they are now, not as they were at import (a redirect).
    input_stream = input_stream or sys.stdin
    transcript = _Transcript(api, chat_id, output or sys.stdout)
    interactive = input_stream.isatty()
    transcript.say(HELP)
    follower = asyncio.create_task(_follow(transcript)) if interactive else None
    try:
        while (line := await _read_line(input_stream)) and line.strip() != ":quit":
            if not (text := line.strip()):
                continue
            if not interactive:
                transcript.say(f"> {text}")
            if text == ":wait":
                if pending is not None and not await pending():
                    transcript.say("  (nothing is on its way: no job is running)")
                    continue
                await _next_message(api, transcript)
                continue
            if text.startswith(":lang"):
                chosen = text.removeprefix(":lang").strip()
                if not chosen:
                    transcript.say(f"  (language: {language_code}; :lang en or :lang ru)")
                    continue
                language_code = chosen
                text = "/start"  # the screens come again in that language
            if text == ":pay":
                await _pay(api, transcript, chat_id, user_id, language_code, interactive)
                continue
            update = _update_for(api, transcript, chat_id, user_id, text, language_code)
            if update is not None:
                api.push_update(update)
                if not interactive:
                    await _settle(api, update["update_id"])
                    transcript.flush()
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        transcript.flush()
