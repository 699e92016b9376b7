"""Everything one campaign runs against, and the simulated users who walk through it.

One World per database: a fresh migrated database, the fake Telegram and the fake
KIE in this process, `trt serve` as a supervised subprocess in webhook mode, and the
courier that plays Telegram's webhook delivery. Runs share the world one after the
other, each with users of its own, so one process start serves many runs and a run's
checks look at its own users (and at the whole database for the ledger invariants).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import and_, or_, select, text, update

from engine import callback_data
from engine.local.bot_api_server import Call
from kie.fake_script import Behaviour
from storage.errors import is_unavailable
from storage.job_states import JOB_FINAL_STATES
from storage.ledger import Ledger
from storage.models import ConversationState, Job, table_of
from storage.users import ensure_user
from tests.faults.courier import Courier, Delivery
from tests.faults.database import Database
from tests.faults.fakes import FaultyKie, FaultyTelegram
from tests.faults.service import WEBHOOK_SECRET, Service, free_port, service_env
from tests.harness import Screen

_T = TypeVar("_T")
SCREEN_METHODS = ("sendMessage", "editMessageText")
_jobs = table_of(Job)
_conversations = table_of(ConversationState)
# A job untouched this long, with nobody known to be working on it, may have time pass.
IDLE_S = 3.0


@dataclass
class World:
    db: Database
    telegram: FaultyTelegram
    kie: FaultyKie
    service: Service
    courier: Courier
    warp: bool = True
    user_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100_001))
    ledger: Ledger | None = None
    # Whole-database problems already reported, so each is reported by one run only.
    reported: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.db.engine)

    def user(self, locale: str = "ru") -> User:
        return User(self, next(self.user_ids), locale)

    async def fund(self, user: User, kopecks: int, key: str) -> None:
        """Money to spend, put there by the test as a top-up would (set-up, no fault)."""
        assert self.ledger is not None
        account = await ensure_user(self.db.engine, user.id, language=user.locale)
        await self.ledger.credit(key, account, kopecks, source="topups", reason="topup")

    async def pass_time(self, user_ids: list[int]) -> int:
        """Time passes for the campaign's idle jobs; see `campaign` for why it is honest.

        A job's next check is brought forward to now when no process can be working on
        it: its process was killed (untouched since the current process started), or it
        has been idle for IDLE_S and is not under a live sender's delivery lease. Its
        deadline, hold timeout and everything else stay as they were."""
        if not self.warp or not user_ids:
            return 0
        now = datetime.now(UTC)
        restarted = datetime.fromtimestamp(self.service.started_at, UTC)
        idle = now - timedelta(seconds=IDLE_S)
        statement = (
            update(_jobs)
            .where(
                _jobs.c.user_id.in_(user_ids),
                _jobs.c.state.not_in(JOB_FINAL_STATES),
                _jobs.c.next_check_at > now,
                or_(
                    _jobs.c.updated_at < restarted,
                    and_(_jobs.c.state != "delivering", _jobs.c.updated_at < idle),
                ),
            )
            .values(next_check_at=now)
        )

        async def write() -> int:
            async with self.db.engine.begin() as conn:
                return int((await conn.execute(statement)).rowcount or 0)

        return await self.retrying(write)

    async def retrying(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """The campaign's own reads wait out an outage it caused, as a person would."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return await make()
            except Exception as exc:
                if not is_unavailable(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async def read() -> list[tuple[Any, ...]]:
            async with self.db.engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]

        return await self.retrying(read)

    async def value(self, sql: str, **params: Any) -> Any:
        async def read() -> Any:
            async with self.db.engine.connect() as conn:
                return await conn.scalar(text(sql), params)

        return await self.retrying(read)


class User:
    """One private chat: taps and types through the courier, and reads the screen the
    fake Telegram shows, as a person would."""

    def __init__(self, world: World, user_id: int, locale: str) -> None:
        self.world = world
        self.id = user_id
        self.locale = locale
        self.telegram = world.telegram
        self.deliveries: list[Delivery] = []
        self.taps: dict[str, Delivery] = {}  # callback query id -> its update's delivery
        self.pre_checkouts: set[str] = set()
        self.retries = 0  # taps and messages sent again because the first did not take
        self._seen = 0
        self._screen: int | None = None

    # ------------------------------------------------------------ acting

    async def deliver(self, update: dict[str, Any]) -> Delivery:
        delivery = await self.world.courier.deliver(update)
        self.deliveries.append(delivery)
        return delivery

    async def send(self, words: str) -> Delivery:
        update = self.telegram.make_message_update(
            self.id, self.id, words, language_code=self.locale
        )
        return await self.deliver(update)

    async def photo(self) -> Delivery:
        update = self.telegram.make_photo_update(self.id, self.id, language_code=self.locale)
        return await self.deliver(update)

    async def tap_data(self, data: str) -> Delivery:
        screen = self.screen()
        update = self.telegram.make_callback_update(
            self.id, self.id, screen.message_id, data, language_code=self.locale
        )
        delivery = await self.deliver(update)
        self.taps[update["callback_query"]["id"]] = delivery
        return delivery

    async def tap(self, suffix: str) -> Delivery:
        """Taps the button whose callback data ends with `:suffix` (a button id, `<` for
        Back, `^` for Main menu, or `#:value` for an option)."""
        return await self.tap_data(self.data_of(suffix))

    async def tap_option(self, value: str | None = None) -> Delivery:
        marker = f":{callback_data.OPTION_ID}:"
        options = [d for _, d in self.screen().flat() if marker in d]
        if value is not None:
            options = [d for d in options if d.endswith(marker + value)]
        if not options:
            raise LookupError(f"no option {value!r} on {self.screen().text[:60]!r}")
        return await self.tap_data(options[0])

    def data_of(self, suffix: str) -> str:
        for _, data in self.screen().flat():
            if data.endswith(":" + suffix):
                return data
        raise LookupError(f"no button {suffix!r} on {self.screen().text[:60]!r}")

    # ------------------------------------------------------------ seeing

    def calls(self, method: str | None = None) -> list[Call]:
        """Bot API calls addressed to this chat (any outcome)."""
        return [
            c
            for c in self.telegram.calls
            if (method is None or c.method == method) and _chat_of(c) == self.id
        ]

    def screen(self) -> Screen:
        """The newest message with a keyboard in this chat, as Telegram shows it now."""
        calls = self.telegram.calls[self._seen :]
        self._seen += len(calls)
        for call in calls:
            if call.method not in SCREEN_METHODS or call.failed or _chat_of(call) != self.id:
                continue
            if not call.params.get("reply_markup"):
                continue
            if call.method == "editMessageText":
                self._screen = int(call.params["message_id"])
            elif isinstance(call.result, dict):
                self._screen = int(call.result["message_id"])
        if self._screen is None:
            raise LookupError(f"user {self.id} has no screen")
        message = self.telegram.messages.get(self.id, {}).get(self._screen, {})
        markup = message.get("reply_markup") or {}
        rows = [
            [(b["text"], b.get("callback_data", "")) for b in row]
            for row in markup.get("inline_keyboard", [])
        ]
        return Screen(self._screen, message.get("text", ""), rows)

    async def state(self) -> str | None:
        key = f"{self.id}:{self.id}"

        async def read() -> Any:
            async with self.world.db.engine.connect() as conn:
                return await conn.scalar(
                    select(_conversations.c.state).where(_conversations.c.key == key)
                )

        found = await self.world.retrying(read)
        return None if found is None else str(found)

    async def until_state(self, *states: str, within_s: float = 10) -> str | None:
        """The conversation's state once it is one of `states`; the last seen if never."""
        deadline = time.monotonic() + within_s
        seen = await self.state()
        while seen not in states and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            seen = await self.state()
        return seen

    def sent_texts(self) -> list[str]:
        """Texts of the messages this chat received (sent, not failed)."""
        return [str(c.params.get("text", "")) for c in self.calls("sendMessage") if not c.failed]


def _chat_of(call: Call) -> int | None:
    raw = call.params.get("chat_id")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


# KIE sends a refused callback again, up to 3 times (documented for several families;
# the spacing is not: 3 s here, longer than `trt serve` takes to come back after a kill).
SUCCESS = Behaviour(run_s=0.3, callback_retries=3, callback_retry_s=3.0)
NEVER = Behaviour(run_s=None, polls=10**9, callback=False)
FAILURE = replace(SUCCESS, fail_code="500", fail_msg="failed (fake)")


@contextlib.asynccontextmanager
async def open_world(
    db: Database, workdir: Path, log: IO[str], *, warp: bool = True
) -> AsyncIterator[World]:
    """The fakes, the service (ready) and the courier, torn down in reverse."""
    async with contextlib.AsyncExitStack() as exits:
        telegram = FaultyTelegram()
        await telegram.start()
        exits.push_async_callback(telegram.stop)
        kie = FaultyKie(default=SUCCESS)
        await kie.start()
        exits.push_async_callback(kie.stop)
        port = free_port()
        env = service_env(
            telegram=telegram.base_url,
            kie=kie.base_url,
            kie_key=kie.api_key,
            database_url=db.url,
            port=port,
        )
        service = Service(env, port, log, workdir)
        await service.start()
        courier = Courier(service.base + "/telegram/webhook", WEBHOOK_SECRET)
        await courier.open()
        exits.push_async_callback(courier.close)
        exits.push_async_callback(service.close)
        yield World(db, telegram, kie, service, courier, warp=warp)
