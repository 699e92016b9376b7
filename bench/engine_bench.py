"""One menu workload through three dispatchers in one process: microseconds per update.

Run with ``.venv/bin/python -m bench.engine_bench`` (or ``make bench``).

The workload: USERS users each send /start and then CLICKS taps through the same
small menu (a fixed cycle of navigation taps that includes Back at every depth
and Main menu from every branch). Everything goes through
``Dispatcher.feed_update(bot, update)`` in process; the Bot talks to a fake
session that answers sendMessage/editMessageText with a Message and
answerCallbackQuery with True, and remembers the last screen of every chat.

The dispatchers:

* ``floor``: hand-written aiogram handlers, a static menu dict with prebuilt
  keyboards and a per-user state dict. The cheapest correct way to do it.
* ``aiogram-dialog``: the same menu as one aiogram-dialog Dialog (Windows with
  SwitchTo/Back buttons; /start does ``dialog_manager.start(..., RESET_STACK)``);
  see `dialog_routers` for why it is not a nested dialog.
* ``engine``: our engine (flows YAML + FlowEngine + engine.telegram.install),
  state in ``MemoryStore``.
* ``sqlite``: our engine with ``storage.conversation_store.SqlStateStore`` on a
  temporary SQLite file migrated by ``storage.migrate``; printed as "not
  available (reason)" when the storage package cannot be imported or fails.

``--profile NAME`` (floor, dialog, engine, sqlite) adds one cProfile'd run.

Fairness: every dispatcher is ``Dispatcher(storage=MemoryStorage(),
events_isolation=SimpleEventIsolation())`` (the production setting of
``trt/app.py``; ``MemoryStorage`` is aiogram's default), so each one pays for the
same FSM middleware and per-chat lock; every Bot has the same default
``parse_mode=HTML``. Each run gets a fresh dispatcher, bot and session; it is
warmed up with its own users first, then timed. Updates are fed one at a time
(users round-robin per step), so the number is the cost of one update end to
end, not concurrency.

What is done before the clock starts: the /start updates and every user's
templates (User, CallbackQuery, Update) and callback query ids. What happens
during the run, identically for every dispatcher: each tap is made by copying
the user's templates (``model_copy``, a few microseconds) with the callback data
read from the keyboard of the chat's last sent or edited message, which is also
the tapped message. The fake session builds its replies the same cheap way and
never serializes requests, so the common overhead in every number is as small as
we could make it (which makes the ratios strict, not flattering).

Sanity checks after every run (a broken dispatcher cannot look fast): before
every tap the chat must show the expected screen; each run must make exactly
USERS sendMessage and USERS*CLICKS editMessageText calls and nothing else; and
every callback query must be answered exactly once, without a notice text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiogram import Bot, Dispatcher, Router
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.enums import ParseMode
from aiogram.filters import CommandStart
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendMessage, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import (
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    User,
)
from aiogram_dialog import Dialog, DialogManager, StartMode, Window, setup_dialogs
from aiogram_dialog.widgets.kbd import Back, Row, SwitchTo
from aiogram_dialog.widgets.text import Const

from engine.loader import parse_flow
from engine.registry import Registry
from engine.runtime import FlowEngine
from engine.store import MemoryStore, StateStore
from engine.telegram import install

TOKEN = "42:BENCH"
BOT_USER_ID = 42
DATE = datetime(2025, 1, 1, tzinfo=UTC)
WARMUP_USERS = 50
# Timed users get ids from 1; warm-up users live far away so they never collide.
WARMUP_FIRST_ID = 10_000_000

# ---- the menu, once, as the source of truth for the floor and the checks ----------

ROOT = "main"
BACK = "« Back"
MAIN_MENU = "≡ Main menu"


@dataclass(frozen=True, slots=True)
class Screen:
    text: str
    # The screen's own buttons as (label, target) rows; Back and Main menu are
    # added as one last row on every screen but the root.
    rows: tuple[tuple[tuple[str, str], ...], ...]
    parent: str | None


SCREENS: dict[str, Screen] = {
    "main": Screen(
        "<b>Main menu</b>\nChoose a section:",
        ((("Catalog", "catalog"),), (("Settings", "settings"), ("Help", "help"))),
        None,
    ),
    "catalog": Screen(
        "<b>Catalog</b>\nChoose an item:",
        ((("Item 1", "item1"), ("Item 2", "item2")),),
        "main",
    ),
    "item1": Screen("<b>Item 1</b>\nThe first item.", (), "catalog"),
    "item2": Screen("<b>Item 2</b>\nThe second item.", (), "catalog"),
    "settings": Screen(
        "<b>Settings</b>\nWhat do you want to change?", ((("Language", "language"),),), "main"
    ),
    "language": Screen("<b>Language</b>\nEnglish is the only one.", (), "settings"),
    "help": Screen("<b>Help</b>\nTap the buttons to move around.", (), "main"),
}

# The taps, by label, repeated as long as --clicks asks; the cycle starts and
# ends on the main menu, so it can repeat.
CYCLE: tuple[str, ...] = (
    "Catalog",  # -> catalog
    "Item 1",  # -> item1
    BACK,  # -> catalog
    "Item 2",  # -> item2
    MAIN_MENU,  # -> main
    "Help",  # -> help
    BACK,  # -> main
    "Settings",  # -> settings
    "Language",  # -> language
    BACK,  # -> settings
    BACK,  # -> main
    "Catalog",  # -> catalog
    BACK,  # -> main
    "Settings",  # -> settings
    MAIN_MENU,  # -> main
)


def next_screen(current: str, label: str) -> str:
    if label == BACK:
        parent = SCREENS[current].parent
        assert parent is not None, f"no Back on {current}"
        return parent
    if label == MAIN_MENU:
        return ROOT
    for row in SCREENS[current].rows:
        for text, target in row:
            if text == label:
                return target
    raise AssertionError(f"no button {label!r} on {current}")


def expected_texts(clicks: int) -> list[str]:
    """The text the chat must show before tap k (index k), and at the end (index clicks)."""
    current = ROOT
    texts = [SCREENS[current].text]
    for k in range(clicks):
        current = next_screen(current, CYCLE[k % len(CYCLE)])
        texts.append(SCREENS[current].text)
    return texts


# ---- the same menu for our engine --------------------------------------------------

FLOW_YAML = """\
locales: [en]
fallback_locale: en
root: main

system:
  back: {en: "« Back"}
  main_menu: {en: "≡ Main menu"}
  stale: {en: "That menu is out of date — here is the current one."}
  error: {en: "Something went wrong (code {error_id}). Please try again."}
  unexpected_input: {en: "Please choose below:"}
  coming_soon: {en: "Coming soon."}
  busy: {en: "One moment…"}

states:
  main:
    text: {en: "<b>Main menu</b>\\nChoose a section:"}
    buttons:
      - - {id: catalog, text: {en: "Catalog"}, to: catalog}
      - - {id: settings, text: {en: "Settings"}, to: settings}
        - {id: help, text: {en: "Help"}, to: help}
  catalog:
    parent: main
    text: {en: "<b>Catalog</b>\\nChoose an item:"}
    buttons:
      - - {id: item1, text: {en: "Item 1"}, to: item1}
        - {id: item2, text: {en: "Item 2"}, to: item2}
  item1:
    parent: catalog
    text: {en: "<b>Item 1</b>\\nThe first item."}
  item2:
    parent: catalog
    text: {en: "<b>Item 2</b>\\nThe second item."}
  settings:
    parent: main
    text: {en: "<b>Settings</b>\\nWhat do you want to change?"}
    buttons:
      - - {id: language, text: {en: "Language"}, to: language}
  language:
    parent: settings
    text: {en: "<b>Language</b>\\nEnglish is the only one."}
  help:
    parent: main
    text: {en: "<b>Help</b>\\nTap the buttons to move around."}
"""

# ---- the fake Bot API session -----------------------------------------------------


class BenchError(AssertionError):
    """A dispatcher did something other than the workload expects."""


class FakeSession(BaseSession):
    """Answers the three methods of the workload in process and remembers each chat's screen.

    Replies are real `Message` objects bound to the bot, made by copying a
    per-chat template (pydantic's `model_construct` costs ~150 us for a Message;
    `model_copy` costs ~3 us), so the session adds little to every update.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bot_user = User(id=BOT_USER_ID, is_bot=True, first_name="Bench")
        self._templates: dict[int, Message] = {}
        self.reset()

    def reset(self) -> None:
        self.screens: dict[int, Message] = {}
        self.calls: dict[str, int] = {}
        self.answered: dict[str, int] = {}
        self.answers_with_text = 0
        self._last_id: dict[int, int] = {}

    def _template(self, bot: Bot, chat_id: int) -> Message:
        template = self._templates.get(chat_id)
        if template is None:
            chat = Chat(id=chat_id, type="private", first_name=f"user{chat_id}")
            template = Message(
                message_id=0, date=DATE, chat=chat, from_user=self.bot_user, text=""
            ).as_(bot)
            self._templates[chat_id] = template
        return template

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 (the signature of BaseSession)
    ) -> TelegramType:
        result: Any
        if isinstance(method, AnswerCallbackQuery):
            self._count("answerCallbackQuery")
            qid = method.callback_query_id
            self.answered[qid] = self.answered.get(qid, 0) + 1
            if method.text:
                self.answers_with_text += 1
            result = True
        elif isinstance(method, EditMessageText):
            self._count("editMessageText")
            chat_id = cast(int, method.chat_id)
            shown = self.screens.get(chat_id)
            if shown is None or shown.message_id != method.message_id:
                raise BenchError(f"chat {chat_id}: edit of a message that is not the screen")
            result = shown.model_copy(
                update={"text": method.text, "reply_markup": method.reply_markup}
            )
            self.screens[chat_id] = result
        elif isinstance(method, SendMessage):
            self._count("sendMessage")
            chat_id = cast(int, method.chat_id)
            message_id = self._last_id.get(chat_id, 0) + 1
            self._last_id[chat_id] = message_id
            result = self._template(bot, chat_id).model_copy(
                update={
                    "message_id": message_id,
                    "text": method.text,
                    "reply_markup": method.reply_markup,
                }
            )
            self.screens[chat_id] = result
        else:
            raise BenchError(f"unexpected Bot API call {type(method).__name__}")
        return cast(TelegramType, result)

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 (the signature of BaseSession)
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        nothing: tuple[bytes, ...] = ()
        for chunk in nothing:
            yield chunk

    async def close(self) -> None:
        return None


def new_dispatcher() -> Dispatcher:
    return Dispatcher(storage=MemoryStorage(), events_isolation=SimpleEventIsolation())


def new_bot() -> tuple[Bot, FakeSession]:
    session = FakeSession()
    bot = Bot(TOKEN, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    return bot, session


@dataclass(slots=True)
class Subject:
    """One dispatcher under test, fresh for each run."""

    dispatcher: Dispatcher
    bot: Bot
    session: FakeSession
    cleanup: Callable[[], Awaitable[None]] | None = None


Builder = Callable[[], Awaitable[Subject]]

# ---- 1. the floor: hand-written handlers ---------------------------------------------


def floor_router() -> Router:
    def markup(name: str) -> InlineKeyboardMarkup:
        screen = SCREENS[name]
        rows = [
            [
                InlineKeyboardButton(text=label, callback_data=f"go:{target}")
                for label, target in row
            ]
            for row in screen.rows
        ]
        if screen.parent is not None:
            rows.append(
                [
                    InlineKeyboardButton(text=BACK, callback_data="back"),
                    InlineKeyboardButton(text=MAIN_MENU, callback_data="home"),
                ]
            )
        return InlineKeyboardMarkup(inline_keyboard=rows)

    menu: dict[str, tuple[str, InlineKeyboardMarkup]] = {
        name: (screen.text, markup(name)) for name, screen in SCREENS.items()
    }
    parents = {name: screen.parent for name, screen in SCREENS.items()}
    where: dict[int, str] = {}
    router = Router(name="floor")

    @router.message(CommandStart())
    async def on_start(message: Message) -> None:
        if message.from_user is not None:
            where[message.from_user.id] = ROOT
        text, keyboard = menu[ROOT]
        await message.answer(text, reply_markup=keyboard)

    @router.callback_query()
    async def on_tap(callback: CallbackQuery) -> None:
        user_id = callback.from_user.id
        data = callback.data or ""
        current = where.get(user_id, ROOT)
        if data == "back":
            target = parents.get(current) or ROOT
        elif data == "home":
            target = ROOT
        else:
            target = data.removeprefix("go:")
        shown = menu.get(target)
        if shown is None or not isinstance(callback.message, Message):
            await callback.answer()
            return
        where[user_id] = target
        await callback.message.edit_text(shown[0], reply_markup=shown[1])
        await callback.answer()

    return router


async def build_floor() -> Subject:
    dispatcher = new_dispatcher()
    dispatcher.include_router(floor_router())
    bot, session = new_bot()
    return Subject(dispatcher, bot, session)


# ---- 2. aiogram-dialog ---------------------------------------------------------------


class MenuSG(StatesGroup):
    # Declaration order matters: aiogram-dialog's Back goes to the previous state.
    main = State()
    catalog = State()
    item1 = State()
    item2 = State()
    settings = State()
    language = State()
    help = State()


def dialog_routers() -> list[Router]:
    """The menu as one aiogram-dialog Dialog.

    Back is aiogram-dialog's `Back` where the previous state in declaration
    order is the parent, and a `SwitchTo` the parent where it is not.

    One dialog, not a Catalog dialog started on top of Main with `Start` and
    closed with `Cancel`: nested dialogs crash this workload. Intent ids are
    `int(time.time()) % 10**8 + randint(0, 99) * 10**8`, so two dialogs started
    in one stack within the same second share an id with a 1 in 100 chance;
    closing the inner one then deletes the outer one's context and the next
    tap raises UnknownIntent ("Context not found for intent id").
    """

    def window(name: str, *widgets: Any) -> Window:
        return Window(Const(SCREENS[name].text), *widgets, state=getattr(MenuSG, name))

    def back_row(back: Back | SwitchTo) -> Row:
        return Row(back, SwitchTo(Const(MAIN_MENU), id="home", state=MenuSG.main))

    def back_to(state: State) -> SwitchTo:
        return SwitchTo(Const(BACK), id="back", state=state)

    menu = Dialog(
        window(
            "main",
            SwitchTo(Const("Catalog"), id="catalog", state=MenuSG.catalog),
            Row(
                SwitchTo(Const("Settings"), id="settings", state=MenuSG.settings),
                SwitchTo(Const("Help"), id="help", state=MenuSG.help),
            ),
        ),
        window(
            "catalog",
            Row(
                SwitchTo(Const("Item 1"), id="item1", state=MenuSG.item1),
                SwitchTo(Const("Item 2"), id="item2", state=MenuSG.item2),
            ),
            back_row(Back(Const(BACK))),
        ),
        window("item1", back_row(Back(Const(BACK)))),
        window("item2", back_row(back_to(MenuSG.catalog))),
        window(
            "settings",
            SwitchTo(Const("Language"), id="language", state=MenuSG.language),
            back_row(back_to(MenuSG.main)),
        ),
        window("language", back_row(Back(Const(BACK)))),
        window("help", back_row(back_to(MenuSG.main))),
    )

    commands = Router(name="dialog-start")

    @commands.message(CommandStart())
    async def on_start(message: Message, dialog_manager: DialogManager) -> None:
        await dialog_manager.start(MenuSG.main, mode=StartMode.RESET_STACK)

    return [commands, menu]


async def build_dialog() -> Subject:
    dispatcher = new_dispatcher()
    dispatcher.include_routers(*dialog_routers())
    setup_dialogs(dispatcher)
    bot, session = new_bot()
    return Subject(dispatcher, bot, session)


# ---- 3. our engine -------------------------------------------------------------------


def engine_subject(store: StateStore) -> Subject:
    engine = FlowEngine(parse_flow(FLOW_YAML, "bench-flows.yaml"), Registry(), store)
    dispatcher = new_dispatcher()
    install(dispatcher, engine)
    bot, session = new_bot()
    return Subject(dispatcher, bot, session)


async def build_engine() -> Subject:
    return engine_subject(MemoryStore())


# ---- 4. our engine with the state in SQLite ------------------------------------------


def sqlite_unavailable() -> str | None:
    """Why the SQLite store cannot be used, or None when it can."""
    try:
        from storage.conversation_store import SqlStateStore  # noqa: F401
        from storage.db import create_engine  # noqa: F401
        from storage.settings import DatabaseSettings  # noqa: F401
    except Exception as exc:  # half-written code can fail in any way on import
        return f"{type(exc).__name__}: {exc}"
    return None


async def _create_schema(url: str, db: Any) -> None:
    """The real migrations when storage offers them, else the SQLModel tables."""
    try:
        from storage.migrate import upgrade_to_head
    except ImportError:
        from sqlmodel import SQLModel

        async with db.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)
        return
    # Alembic runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(upgrade_to_head, url)


async def build_engine_sqlite() -> Subject:
    from storage.conversation_store import SqlStateStore
    from storage.db import create_engine
    from storage.settings import DatabaseSettings

    folder = tempfile.TemporaryDirectory(prefix="engine-bench-")
    url = f"sqlite+aiosqlite:///{Path(folder.name) / 'bench.db'}"
    db = create_engine(DatabaseSettings(DATABASE_URL=url))
    await _create_schema(url, db)
    subject = engine_subject(SqlStateStore(db))

    async def cleanup() -> None:
        dispose = getattr(db, "dispose", None)
        if dispose is not None:
            result = dispose()
            if asyncio.iscoroutine(result):
                await result
        folder.cleanup()

    subject.cleanup = cleanup
    return subject


# ---- the workload --------------------------------------------------------------------


def find_data(markup: Any, label: str, chat_id: int) -> str:
    if isinstance(markup, InlineKeyboardMarkup):
        for row in markup.inline_keyboard:
            for button in row:
                if button.text == label and button.callback_data is not None:
                    return button.callback_data
    raise BenchError(f"chat {chat_id}: no button {label!r} on the screen")


@dataclass(slots=True)
class Prepared:
    """Everything about one run that can be built before the clock starts."""

    starts: list[Update]
    users: list[User]
    query_templates: list[CallbackQuery]
    update_templates: list[Update]
    query_ids: list[list[str]]
    update_ids: list[list[int]]
    labels: list[str]
    texts: list[str]
    issued: set[str] = field(default_factory=set)


def prepare(bot: Bot, users: int, clicks: int, first_id: int) -> Prepared:
    ids = range(first_id, first_id + users)
    people = [
        User(id=uid, is_bot=False, first_name=f"user{uid}", language_code="en").as_(bot)
        for uid in ids
    ]
    update_id = first_id * 100
    starts = []
    for person in people:
        update_id += 1
        raw = {
            "update_id": update_id,
            "message": {
                "message_id": 1_000_000,
                "date": DATE,
                "chat": {"id": person.id, "type": "private", "first_name": person.first_name},
                "from": person.model_dump(),
                "text": "/start",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
            },
        }
        starts.append(Update.model_validate(raw, context={"bot": bot}))
    query_templates = [
        CallbackQuery(id="0", from_user=person, chat_instance=f"ci{person.id}").as_(bot)
        for person in people
    ]
    update_templates = [
        Update(update_id=0, callback_query=query).as_(bot) for query in query_templates
    ]
    query_ids = [[f"q{person.id}.{k}" for person in people] for k in range(clicks)]
    update_ids = []
    for _ in range(clicks):
        row = []
        for _ in people:
            update_id += 1
            row.append(update_id)
        update_ids.append(row)
    return Prepared(
        starts=starts,
        users=people,
        query_templates=query_templates,
        update_templates=update_templates,
        query_ids=query_ids,
        update_ids=update_ids,
        labels=[CYCLE[k % len(CYCLE)] for k in range(clicks)],
        texts=expected_texts(clicks),
        issued={qid for row in query_ids for qid in row},
    )


async def drive(subject: Subject, work: Prepared) -> float:
    """Feeds the whole workload; returns the seconds it took."""
    bot = subject.bot
    feed = subject.dispatcher.feed_update
    screens = subject.session.screens
    people = work.users
    count = len(people)
    started = time.perf_counter()
    for update in work.starts:
        await feed(bot, update)
    for k, label in enumerate(work.labels):
        want = work.texts[k]
        query_ids = work.query_ids[k]
        update_ids = work.update_ids[k]
        for i in range(count):
            chat_id = people[i].id
            shown = screens.get(chat_id)
            if shown is None or shown.text != want:
                got = None if shown is None else shown.text
                raise BenchError(f"chat {chat_id} before tap {k}: shows {got!r}, want {want!r}")
            query = work.query_templates[i].model_copy(
                update={
                    "id": query_ids[i],
                    "message": shown,
                    "data": find_data(shown.reply_markup, label, chat_id),
                }
            )
            update = work.update_templates[i].model_copy(
                update={"update_id": update_ids[i], "callback_query": query}
            )
            await feed(bot, update)
    return time.perf_counter() - started


def verify(name: str, subject: Subject, work: Prepared) -> None:
    session = subject.session
    users = len(work.users)
    taps = users * len(work.labels)
    want = {"sendMessage": users}
    if taps:
        want |= {"editMessageText": taps, "answerCallbackQuery": taps}
    if session.calls != want:
        raise BenchError(f"{name}: Bot API calls {session.calls}, want {want}")
    if set(session.answered) != work.issued:
        raise BenchError(f"{name}: answered ids differ from the issued ones")
    twice = sum(1 for n in session.answered.values() if n != 1)
    if twice:
        raise BenchError(f"{name}: {twice} callbacks answered more than once")
    if session.answers_with_text:
        raise BenchError(f"{name}: {session.answers_with_text} answers carried a notice")
    final = work.texts[-1]
    wrong = sum(1 for user in work.users if session.screens[user.id].text != final)
    if wrong:
        raise BenchError(f"{name}: {wrong} chats end on the wrong screen")


async def run_once(name: str, build: Builder, users: int, clicks: int) -> float:
    """A fresh dispatcher: warm up, then time the workload; microseconds per update."""
    subject = await build()
    try:
        warm = prepare(subject.bot, WARMUP_USERS, clicks, WARMUP_FIRST_ID)
        await drive(subject, warm)
        verify(f"{name} (warm-up)", subject, warm)
        subject.session.reset()
        work = prepare(subject.bot, users, clicks, 1)
        gc.collect()
        seconds = await drive(subject, work)
        verify(name, subject, work)
    finally:
        if subject.cleanup is not None:
            await subject.cleanup()
    return seconds * 1e6 / (users * (clicks + 1))


async def profile_once(name: str, build: Builder, users: int, clicks: int, top: int) -> None:
    """One timed run of `name` under cProfile; the hottest functions by own time."""
    subject = await build()
    try:
        warm = prepare(subject.bot, WARMUP_USERS, clicks, WARMUP_FIRST_ID)
        await drive(subject, warm)
        subject.session.reset()
        work = prepare(subject.bot, users, clicks, 1)
        profiler = cProfile.Profile()
        profiler.enable()
        await drive(subject, work)
        profiler.disable()
        verify(name, subject, work)
    finally:
        if subject.cleanup is not None:
            await subject.cleanup()
    print(f"\nprofile of {name}: {users * (clicks + 1)} updates, top {top} by own time")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    print(f"profile of {name}: top {top} by cumulative time")
    stats.sort_stats("cumulative").print_stats(top)


# ---- command line --------------------------------------------------------------------

SUBJECTS: dict[str, tuple[str, Builder]] = {
    "floor": ("floor (hand-written aiogram)", build_floor),
    "dialog": ("aiogram-dialog 2.6", build_dialog),
    "engine": ("engine (MemoryStore)", build_engine),
    "sqlite": ("engine (SqlStateStore, SQLite)", build_engine_sqlite),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine_bench",
        description="The same menu workload through the floor, aiogram-dialog and our engine.",
    )
    parser.add_argument("--users", type=int, default=1000, help="users (default 1000)")
    parser.add_argument("--clicks", type=int, default=20, help="taps per user (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument(
        "--profile",
        choices=sorted(SUBJECTS),
        help="after the table, profile one run of this dispatcher with cProfile",
    )
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    args = parser.parse_args(argv)
    if args.users < 1 or args.clicks < 0 or args.repeat < 1:
        parser.error("--users and --repeat must be at least 1, --clicks at least 0")
    return args


async def main(args: argparse.Namespace) -> int:
    names = list(SUBJECTS)
    reason = sqlite_unavailable()
    sqlite_failed = False
    if reason is not None:
        names.remove("sqlite")
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.repeat):
        # Rotate the order, so no dispatcher always runs first or last.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            if name == "sqlite" and sqlite_failed:
                continue
            try:
                us = await run_once(name, SUBJECTS[name][1], args.users, args.clicks)
            except Exception as exc:
                # A store still being written must not hide the other results.
                if name != "sqlite":
                    raise
                sqlite_failed = True
                reason = f"failed: {type(exc).__name__}: {exc}"
                continue
            results[name].append(us)

    updates = args.users * (args.clicks + 1)
    print(
        f"workload: {args.users} users x (/start + {args.clicks} taps) = {updates} updates "
        f"per run; fresh dispatcher per run, {WARMUP_USERS}-user warm-up; "
        f"{args.repeat} interleaved runs"
    )
    python = sys.version.split()[0]
    print(f"python {python}, {os.cpu_count()} cpus; every number below passed its checks")
    print()
    floor = min(results["floor"])
    header = f"{'dispatcher':<32} {'us/update best':>15} {'median':>8} {'x floor':>8}"
    print(header)
    print("-" * len(header))
    for name, (label, _) in SUBJECTS.items():
        if name == "sqlite" and (reason is not None or not results.get(name)):
            print(f"sqlite store: not available ({reason})")
            continue
        best = min(results[name])
        median = statistics.median(results[name])
        print(f"{label:<32} {best:>15.1f} {median:>8.1f} {best / floor:>7.2f}x")

    if args.profile:
        if args.profile == "sqlite" and reason is not None:
            print(f"cannot profile sqlite: {reason}")
            return 1
        label, build = SUBJECTS[args.profile]
        await profile_once(label, build, args.users, args.clicks, args.top)
    return 1 if sqlite_failed else 0


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main(args))
    return 130


if __name__ == "__main__":
    sys.exit(cli())
