"""A fake Telegram Bot API that we own, spoken to over real HTTP by the real aiogram Bot.

So the client's serialisation and error classes are exercised too, and Telegram's strict
rules (one answer per callback query, no edit to identical content, HTML that must parse)
fail here as in production. Tests and `make run` (no BOT_TOKEN) both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

JSONDict = dict[str, Any]

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup"
    " of the currently existing message are exactly the same"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
ALREADY_REFUNDED = "Bad Request: CHARGE_ALREADY_REFUNDED"
_METHODS = (
    "getMe getUpdates getWebhookInfo setWebhook deleteWebhook sendMessage editMessageText"
    " editMessageCaption editMessageReplyMarkup deleteMessage answerCallbackQuery sendInvoice"
    " getFile sendPhoto sendVideo sendAudio sendDocument sendAnimation answerPreCheckoutQuery"
    " setMyCommands sendChatAction refundStarPayment"
).split()
_CANONICAL = {name.lower(): name for name in _METHODS}
_TRUE = {"answerPreCheckoutQuery", "setMyCommands", "sendChatAction"}
_TRUE |= {"setWebhook", "deleteWebhook"}
# Form fields are strings; these stay strings even when they look like JSON or numbers.
_TEXT_KEYS = frozenset(
    "text caption title description payload callback_query_id pre_checkout_query_id url"
    " inline_message_id telegram_payment_charge_id secret_token start_parameter currency"
    " provider_token file_id parse_mode error_message".split()
)
_INT_KEYS = frozenset("chat_id message_id user_id offset limit timeout cache_time".split())
_FLAGS = ("true", "false")
_TAG = re.compile(r"<(/?)([a-zA-Z-]*)[^>]*>")
_TAGS = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline"}
_TAGS |= {"ins": "underline", "s": "strikethrough", "strike": "strikethrough", "pre": "pre"}
_TAGS |= {"del": "strikethrough", "code": "code", "a": "text_link", "tg-spoiler": "spoiler"}
_ENTITIES_OF = {"text": "entities", "caption": "caption_entities"}
# Telegram's limits, in UTF-16 code units of the text after entities parsing.
_LIMITS = {"text": 4096, "caption": 1024}
# Media kinds by send method, with the fields their objects carry besides the file's own.
_MEDIA = {"sendPhoto": "photo", "sendVideo": "video", "sendAudio": "audio"}
_MEDIA |= {"sendDocument": "document", "sendAnimation": "animation"}
# A valid 1x1 PNG, served for files that simulated users "sent".
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f01f00050001ff89993d1d0000000049454e44ae426082"
)
_SHAPES: dict[str, JSONDict] = {
    "photo": {"width": 1280, "height": 1280, "file_size": 90_000},
    "video": {"width": 1280, "height": 720, "duration": 5, "file_size": 10**6},
    "audio": {"duration": 30, "mime_type": "audio/mpeg", "file_size": 500_000},
    "document": {"file_name": "file.pdf", "mime_type": "application/pdf", "file_size": 10_000},
    "animation": {"width": 320, "height": 240, "duration": 3, "mime_type": "video/mp4"},
}


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Call:
    """`result` is the answer (the error body when `failed`); None for getUpdates, which is
    recorded on arrival: its answer may take seconds, and watchers need to see the poll begin."""

    method: str
    params: JSONDict
    token: str
    at: float
    failed: bool = False
    result: Any = None
    files: dict[str, Upload] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after

    def body(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad(description: str) -> ApiError:
    return ApiError(400, "Bad Request: " + description)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _html(raw: str) -> tuple[str, list[JSONDict]]:
    """Telegram keeps what it shows, plain text plus entities, and compares that on edit."""
    parts: list[str] = []
    entities: list[JSONDict] = []
    opened: list[tuple[str, int]] = []
    length = pos = 0
    for tag in _TAG.finditer(raw):
        parts.append(html.unescape(raw[pos : tag.start()]))
        length, pos, name = length + _utf16_len(parts[-1]), tag.end(), tag[2].lower()
        if name not in _TAGS:
            raise _bad(f'can\'t parse entities: Unsupported start tag "{name}"')
        if not tag[1]:
            opened.append((name, length))
        elif not opened or opened[-1][0] != name:
            raise _bad(f'can\'t parse entities: Unmatched end tag "{name}"')
        elif length > (start := opened.pop()[1]):
            entities.append({"type": _TAGS[name], "offset": start, "length": length - start})
    if opened:
        raise _bad(f"can't parse entities: Can't find end tag for {opened[-1][0]}")
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join([*parts, html.unescape(raw[pos:])]), entities


def _formatted(params: JSONDict, key: str) -> JSONDict:
    raw, entities_key = str(params.get(key) or ""), _ENTITIES_OF[key]
    entities: list[JSONDict] = list(params.get(entities_key) or [])
    if str(params.get("parse_mode")).lower() == "html":
        raw, entities = _html(raw)
    if _utf16_len(raw) > _LIMITS[key]:
        raise _bad("message is too long" if key == "text" else "message caption is too long")
    if not raw:
        return {}
    return {key: raw, entities_key: entities} if entities else {key: raw}


def _inline_markup(markup: Any) -> JSONDict | None:
    """Only inline keyboards belong to a message; Telegram leaves other markup out of it."""
    if not isinstance(markup, dict) or not markup.get("inline_keyboard"):
        return None
    for row in markup["inline_keyboard"]:
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise _bad("BUTTON_DATA_INVALID")
    return markup


async def _read_params(request: web.Request) -> tuple[JSONDict, dict[str, Upload]]:
    if request.content_type == "application/json":
        body = await request.json()
        return (dict(body) if isinstance(body, dict) else {}), {}
    params: JSONDict = {}
    files: dict[str, Upload] = {}
    for key, value in [*request.query.items(), *(await request.post()).items()]:
        if isinstance(value, web.FileField):
            files[key] = Upload(value.filename, value.file.read())
            continue
        params[key] = raw = value if isinstance(value, str) else bytes(value).decode()
        if key not in _TEXT_KEYS and (key in _INT_KEYS or raw[:1] in "{[" or raw in _FLAGS):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(raw)
    return params, files


def _chat(chat_id: int) -> JSONDict:
    return {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}


def _chat_id(params: JSONDict) -> int:
    if not isinstance(chat_id := params.get("chat_id"), int):
        raise _bad("chat not found")
    return chat_id


def _user(user_id: int, language_code: str, first_name: str = "Test") -> JSONDict:
    return dict(id=user_id, is_bot=False, first_name=first_name, language_code=language_code)


def _bot_user(token: str) -> JSONDict:
    bot_id = int(token.partition(":")[0])
    return {"id": bot_id, "is_bot": True, "first_name": "Local Bot", "username": "local_bot"}


class FakeBotAPI:
    """Telegram's side of every chat, in memory, for one test or one `make run`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[int, dict[int, JSONDict]] = {}  # the bot's, latest version
        self.answered_callbacks: dict[str, int] = {}  # attempts per query id, failed too
        self.files: dict[str, JSONDict] = {}  # file_id -> File
        self.file_bytes: dict[str, bytes] = {}  # file_unique_id -> uploaded content
        self.base_url = ""
        self._answered: set[str] = set()
        self._errors: dict[str, list[ApiError]] = {}
        self._drops: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self.refunded: set[str] = set()  # charge ids refunded: a second refund is refused
        self._updates: list[JSONDict] = []
        self._last_message_id: dict[int, int] = {}
        self._update_ids = itertools.count(1)
        self._counter = itertools.count(1)
        self._tick = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Returns the base URL for `TelegramAPIServer.from_base`; a second call reuses it."""
        if self._runner is None:
            self._closing = False
            app = web.Application(client_max_size=50 * 2**20)
            app.router.add_route("*", "/bot{token}/{method}", self._handle)
            app.router.add_get("/file/bot{token}/files/{unique_id}", self._download)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, host, port).start()
            self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        self._closing = True
        self._notify()  # long polls return now instead of holding up the shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def clear(self) -> None:
        """Forgets calls and answer counts; chats keep their messages, as in Telegram."""
        self.calls.clear()
        self.answered_callbacks.clear()

    def inject_error(
        self,
        method: str,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        queue = self._errors.setdefault(method.lower(), [])
        queue.extend(ApiError(error_code, description, retry_after) for _ in range(times))

    def inject_disconnect(self, method: str, times: int = 1) -> None:
        """The next `times` calls of `method` get no answer: the connection is cut, as when
        Telegram is unreachable (aiogram raises TelegramNetworkError)."""
        self._drops[method.lower()] = self._drops.get(method.lower(), 0) + times

    def inject_lost_answer(self, method: str, times: int = 1) -> None:
        """The next `times` calls of `method` are performed, then their answer is cut off:
        the caller cannot know that it happened (a timeout)."""
        self._lost[method.lower()] = self._lost.get(method.lower(), 0) + times

    async def wait_for_call(
        self,
        method: str | None,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - one deadline for a condition, not one await
        *,
        since: int = 0,
    ) -> Call:
        """The first call in `calls[since:]` that matches, waiting for it; `method` None: any."""

        def match() -> Call | None:
            wanted = (method or "").lower()
            calls = (c for c in self.calls[since:] if not wanted or c.method.lower() == wanted)
            return next((c for c in calls if predicate is None or predicate(c)), None)

        if await self._until(lambda: match() is not None, timeout) and (found := match()):
            return found
        raise TimeoutError(f"no {method or 'call'} within {timeout}s")

    def push_update(self, update: JSONDict) -> JSONDict:
        if "update_id" not in update:
            update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        self._notify()
        return update

    # ------------------------------------------------------------ update builders

    def make_message_update(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        language_code: str = "ru",
        first_name: str = "Test",
    ) -> JSONDict:
        content: JSONDict = {"text": text}
        if text.startswith("/"):
            command = {"type": "bot_command", "offset": 0, "length": _utf16_len(text.split()[0])}
            content["entities"] = [command]
        return self._user_message(chat_id, _user(user_id, language_code, first_name), content)

    def make_callback_update(
        self, chat_id: int, user_id: int, message_id: int, data: str, language_code: str = "ru"
    ) -> JSONDict:
        """The message comes as the bot left it; an unknown one as Telegram sends an old one."""
        query_id = f"{user_id}{next(self._counter):08d}"
        message = copy.deepcopy(self.messages.get(chat_id, {}).get(message_id))
        query = {
            "id": query_id,
            "from": _user(user_id, language_code),
            "message": message or {"message_id": message_id, "date": 0, "chat": _chat(chat_id)},
            "chat_instance": str(chat_id),
            "data": data,
        }
        return {"update_id": next(self._update_ids), "callback_query": query}

    def make_photo_update(self, chat_id: int, user_id: int, **options: Any) -> JSONDict:
        """Options: caption, language_code, and fields of the largest PhotoSize."""
        return self._media_update(chat_id, user_id, "photo", options)

    def make_document_update(self, chat_id: int, user_id: int, **options: Any) -> JSONDict:
        """Options: caption, language_code, and Document fields (mime_type, file_size...)."""
        return self._media_update(chat_id, user_id, "document", options)

    def make_video_update(self, chat_id: int, user_id: int, **options: Any) -> JSONDict:
        """Options: caption, language_code, and Video fields (duration, file_size...)."""
        return self._media_update(chat_id, user_id, "video", options)

    def make_audio_update(self, chat_id: int, user_id: int, **options: Any) -> JSONDict:
        """Options: caption, language_code, and Audio fields (duration, file_size...)."""
        return self._media_update(chat_id, user_id, "audio", options)

    def make_pre_checkout_update(
        self,
        user_id: int,
        payload: str,
        currency: str,
        total_amount: int,
        language_code: str = "ru",
    ) -> JSONDict:
        """What Telegram sends when the user presses Pay on an invoice."""
        query = {
            "id": f"pcq{next(self._counter)}",
            "from": _user(user_id, language_code),
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": payload,
        }
        return {"update_id": next(self._update_ids), "pre_checkout_query": query}

    def make_successful_payment_update(
        self,
        chat_id: int,
        user_id: int,
        payload: str,
        currency: str,
        total_amount: int,
        charge_id: str | None = None,
        language_code: str = "ru",
    ) -> JSONDict:
        """The service message that confirms a payment; the charge id is Telegram's key."""
        payment = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": payload,
            "telegram_payment_charge_id": charge_id or f"stxcharge{next(self._counter)}",
            "provider_payment_charge_id": "" if currency == "XTR" else "provider-charge",
        }
        user = _user(user_id, language_code)
        return self._user_message(chat_id, user, {"successful_payment": payment})

    def _media_update(self, chat_id: int, user_id: int, kind: str, options: JSONDict) -> JSONDict:
        caption, language_code = options.pop("caption", ""), options.pop("language_code", "ru")
        media: Any = self._new_file(kind, **(_SHAPES[kind] | options))
        if kind == "photo":  # Telegram sends every size, smallest first
            media = [self._new_file(kind, width=90, height=90, file_size=1500), media]
        content = {kind: media} | ({"caption": caption} if caption else {})
        return self._user_message(chat_id, _user(user_id, language_code), content)

    def _user_message(self, chat_id: int, user: JSONDict, content: JSONDict) -> JSONDict:
        message = {"message_id": self._next_message_id(chat_id), "from": user, **content}
        message |= {
            "chat": _chat(chat_id) | {"first_name": user["first_name"]},
            "date": int(time.time()),
        }
        return {"update_id": next(self._update_ids), "message": message}

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.Response:
        token, at = request.match_info["token"], time.monotonic()
        params, files = await _read_params(request)
        method = _CANONICAL.get(request.match_info["method"].lower(), request.match_info["method"])
        if method == "answerCallbackQuery":  # every attempt counts, failed ones too
            query_id = str(params.get("callback_query_id"))
            self.answered_callbacks[query_id] = self.answered_callbacks.get(query_id, 0) + 1
        if self._drops.get(method.lower(), 0) > 0:
            # Telegram unreachable: the connection ends with no answer at all.
            self._drops[method.lower()] -= 1
            self._record(Call(method, params, token, at, True, "dropped", files))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        try:
            if method not in _METHODS:
                raise ApiError(404, "Not Found: method not found")
            if queued := self._errors.get(method.lower()):
                raise queued.pop(0)
            if method == "getUpdates":
                self._record(Call(method, params, token, at, files=files))
                return web.json_response({"ok": True, "result": await self._get_updates(params)})
            result = self._dispatch(method, token, params, files)
        except ApiError as error:
            self._record(Call(method, params, token, at, True, error.body(), files))
            return web.json_response(error.body(), status=error.code)
        self._record(Call(method, params, token, at, False, result, files))
        if self._lost.get(method.lower(), 0) > 0 and request.transport is not None:
            # Done, then the answer is lost: what a client's timeout leaves it not knowing.
            self._lost[method.lower()] -= 1
            request.transport.abort()
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        """Bot.download_file: the bytes an upload carried, or a tiny PNG for files a
        simulated user sent (they have no bytes of their own)."""
        unique_id = request.match_info["unique_id"]
        if not any(f["file_unique_id"] == unique_id for f in self.files.values()):
            raise web.HTTPNotFound()
        return web.Response(body=self.file_bytes.get(unique_id, TINY_PNG))

    async def _get_updates(self, params: JSONDict) -> list[JSONDict]:
        """As in Telegram, an offset confirms, and so drops, every update before it."""
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 100)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        await self._until(lambda: bool(self._updates), min(float(params.get("timeout") or 0), 50))
        return copy.deepcopy(self._updates[:limit])

    async def _until(self, ready: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Re-checks `ready` whenever a call or an update arrives; gives up when stopping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tick = self._tick
            if ready():
                return True
            if (remaining := deadline - loop.time()) <= 0 or self._closing:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(remaining, 1.0))

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._notify()

    # ------------------------------------------------------------ methods

    def _dispatch(self, method: str, token: str, params: JSONDict, files: dict[str, Upload]) -> Any:
        if method in _TRUE:
            return True
        if method in _MEDIA:
            return self._send_media(token, params, files, _MEDIA[method])
        if method.startswith("editMessage"):
            return self._edit(params, method.removeprefix("editMessage").lower())
        match method:
            case "getMe":
                return _bot_user(token) | {"can_join_groups": False}
            case "sendMessage":
                if not str((content := _formatted(params, "text")).get("text", "")).strip():
                    raise _bad("message text is empty")
                return self._new_message(token, params, content)
            case "refundStarPayment":
                charge = str(params.get("telegram_payment_charge_id"))
                if charge in self.refunded:
                    raise ApiError(400, ALREADY_REFUNDED)
                self.refunded.add(charge)
                return True
            case "answerCallbackQuery":
                query_id = str(params.get("callback_query_id"))
                if query_id in self._answered:
                    raise ApiError(400, QUERY_TOO_OLD)
                self._answered.add(query_id)
                return True
            case "sendInvoice":
                keys = ("title", "description", "currency", "start_parameter")
                invoice: JSONDict = {key: str(params.get(key) or "") for key in keys}
                invoice["total_amount"] = sum(int(p["amount"]) for p in params.get("prices") or [])
                return self._new_message(token, params, {"invoice": invoice})
            case "deleteMessage":
                self.messages.get(_chat_id(params), {}).pop(int(params.get("message_id") or 0), 0)
                return True
            case "getFile":
                if (file := self.files.get(str(params.get("file_id")))) is None:
                    raise _bad("invalid file_id")
                return file | {"file_path": f"files/{file['file_unique_id']}"}
        pending = {"pending_update_count": len(self._updates)}  # getWebhookInfo
        return {"url": "", "has_custom_certificate": False} | pending

    def _next_message_id(self, chat_id: int) -> int:
        """One sequence per chat for both sides, as in a private chat."""
        self._last_message_id[chat_id] = self._last_message_id.get(chat_id, 0) + 1
        return self._last_message_id[chat_id]

    def _new_message(self, token: str, params: JSONDict, content: JSONDict) -> JSONDict:
        chat_id, markup = _chat_id(params), _inline_markup(params.get("reply_markup"))
        message_id = self._next_message_id(chat_id)
        message = {"message_id": message_id, "from": _bot_user(token), "chat": _chat(chat_id)}
        message |= {"date": int(time.time()), **content}
        if markup:
            message["reply_markup"] = markup
        self.messages.setdefault(chat_id, {})[message_id] = message
        return copy.deepcopy(message)

    def _new_file(self, kind: str, file_id: str = "", **fields: Any) -> JSONDict:
        """Registers a file for getFile; `fields` shape the object a message carries."""
        if file_id not in self.files:
            n = next(self._counter)
            file_id = file_id or f"local-{kind}-{n}"
            self.files[file_id] = {"file_id": file_id, "file_unique_id": f"{kind}{n}"}
            if "file_size" in fields:
                self.files[file_id]["file_size"] = fields["file_size"]
        return self.files[file_id] | fields

    def _send_media(
        self, token: str, params: JSONDict, files: dict[str, Upload], kind: str
    ) -> JSONDict:
        ref = str(params.get(kind) or "")
        upload = files.get(ref.removeprefix("attach://")) if ref.startswith("attach://") else None
        if not ref or (ref.startswith("attach://") and upload is None):
            raise _bad(f"there is no {kind} in the request")
        shape = {k: params.get(k) or v for k, v in _SHAPES[kind].items() if k != "file_size"}
        if upload is not None:
            shape["file_size"] = len(upload.data)
            shape |= {"file_name": upload.filename} if "file_name" in shape else {}
        file_id = "" if upload or "://" in ref else ref  # a file_id is reused, a URL is new
        media: Any = self._new_file(kind, file_id, **shape)
        if upload is not None:
            self.file_bytes[media["file_unique_id"]] = upload.data
        content = {kind: [media] if kind == "photo" else media}
        if kind == "animation":  # Telegram sends an animation as a document too
            content["document"] = media
        return self._new_message(token, params, content | _formatted(params, "caption"))

    def _edit(self, params: JSONDict, part: str) -> JSONDict | bool:
        """Telegram drops the keyboard unless the edit repeats it, and refuses a no-op."""
        if params.get("inline_message_id"):
            return True
        chat_id, message_id = _chat_id(params), int(params.get("message_id") or 0)
        if (current := self.messages.get(chat_id, {}).get(message_id)) is None:
            raise _bad("message to edit not found")
        if part != "replymarkup" and (part == "text") != ("text" in current):
            raise _bad(f"there is no {part} in the message to edit")
        drop = {"reply_markup", "edit_date", part, _ENTITIES_OF.get(part)}
        updated = {k: v for k, v in current.items() if k not in drop}
        if part != "replymarkup":
            updated |= _formatted(params, part)
            if part == "text" and "text" not in updated:
                raise _bad("message text is empty")
        if markup := _inline_markup(params.get("reply_markup")):
            updated["reply_markup"] = markup
        if updated == {k: v for k, v in current.items() if k != "edit_date"}:
            raise ApiError(400, NOT_MODIFIED)
        self.messages[chat_id][message_id] = updated | {"edit_date": int(time.time())}
        return copy.deepcopy(self.messages[chat_id][message_id])
