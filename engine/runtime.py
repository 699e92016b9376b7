"""The conversation engine: one update in, one compare-and-set move, one screen out.

Order of work for a tap: decode, load, check the screen is current, claim the
move with compare-and-set, run the action, save, answer, render. A tap that
loses the compare-and-set (double tap, old message, old deploy, a second
process) is answered with a notice and shown the current screen; it never
runs an action, so no action runs twice for one screen.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message, User

from engine import callback_data
from engine.callback_data import Tap
from engine.graph import BACK, INPUT, MAIN, OPTION, FlowGraph, button_trigger
from engine.input_check import InputRejected, read_input
from engine.loader import LoadedFlow
from engine.registry import Context, Outcome, Registry
from engine.render import Renderer, Screen
from engine.spec import Button, State
from engine.store import Snapshot, StateStore

log = logging.getLogger("engine")

Answer = Callable[..., Awaitable[None]]
_CAS_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Where:
    """The conversation an update belongs to."""

    bot: Bot
    chat_id: int
    user: User

    @property
    def key(self) -> str:
        return f"{self.chat_id}:{self.user.id}"


class ActionFailed(Exception):
    """An action raised; carries the short id shown to the user and logged."""

    def __init__(self, error_id: str) -> None:
        super().__init__(error_id)
        self.error_id = error_id


class FlowEngine:
    def __init__(self, flow: LoadedFlow, registry: Registry, store: StateStore) -> None:
        self.flow = flow
        self.spec = flow.spec
        self.version = flow.version
        self.registry = registry
        self.store = store
        self.graph = FlowGraph(flow.spec)
        self.renderer = Renderer(flow, registry)
        self._buttons: dict[tuple[str, str], Button] = {
            (name, b.id): b
            for name, st in flow.spec.states.items()
            for row in st.buttons
            for b in row
        }

    # ---- helpers -------------------------------------------------------------

    def locale_of(self, user: User) -> str:
        code = (user.language_code or "").split("-")[0].lower()
        if code in self.spec.locales:
            return code
        return self.spec.fallback_locale if code else self.spec.default_locale

    def context(self, where: Where, snap: Snapshot, args: dict[str, Any] | None = None) -> Context:
        locale = snap.locale
        return Context(
            bot=where.bot,
            user_id=where.user.id,
            chat_id=where.chat_id,
            locale=locale,
            state=snap.state,
            data=dict(snap.data),
            args=args or {},
            text=lambda key: self.renderer.product_text(key, locale),
        )

    async def screen(self, where: Where, snap: Snapshot) -> Screen:
        return await self.renderer.render(
            snap.state, snap.counter, snap.locale, lambda: self.context(where, snap)
        )

    async def send(self, where: Where, snap: Snapshot, prefix: str | None = None) -> None:
        screen = await self.screen(where, snap)
        text = f"{prefix}\n\n{screen.text}" if prefix else screen.text
        await where.bot.send_message(where.chat_id, text, reply_markup=screen.markup)

    async def show(self, where: Where, snap: Snapshot, message: Message | None) -> None:
        """Put the screen on the tapped message; a new message when that cannot be edited."""
        screen = await self.screen(where, snap)
        if message is not None:
            try:
                await where.bot.edit_message_text(
                    text=screen.text,
                    chat_id=where.chat_id,
                    message_id=message.message_id,
                    reply_markup=screen.markup,
                )
                return
            except TelegramBadRequest as exc:
                if "not modified" in exc.message:
                    return
                log.info("edit failed, sending a new message: %s", exc.message)
        await where.bot.send_message(where.chat_id, screen.text, reply_markup=screen.markup)

    async def load_or_create(self, where: Where) -> Snapshot:
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.store.load(where.key)
            if snap is not None:
                if snap.state not in self.spec.states:
                    # The state was removed by a deploy: start over at the root.
                    fresh = Snapshot(self.spec.root, snap.counter + 1, snap.locale, {})
                    if await self.store.save(where.key, fresh, snap.counter):
                        return fresh
                    continue
                return snap
            fresh = Snapshot(self.spec.root, 1, self.locale_of(where.user), {})
            if await self.store.save(where.key, fresh, None):
                return fresh
        raise RuntimeError(f"conversation {where.key} is changing too fast to load")

    # ---- /start --------------------------------------------------------------

    async def start(self, where: Where) -> None:
        """Reset to the root whatever happened before; a new message, old ones go stale."""
        locale = self.locale_of(where.user)
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.store.load(where.key)
            fresh = Snapshot(self.spec.root, (snap.counter + 1) if snap else 1, locale, {})
            if await self.store.save(where.key, fresh, snap.counter if snap else None):
                await self.send(where, fresh)
                return
        raise RuntimeError(f"conversation {where.key} is changing too fast to restart")

    # ---- from outside an update ---------------------------------------------

    async def push(
        self,
        bot: Bot,
        chat_id: int,
        user_id: int,
        state: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Moves a conversation to `state` and sends that screen as a new message.

        For work that finishes after its update was answered (a generation's result,
        a payment): like aiogram-dialog's background manager, the product says where
        the user now is; older screens go stale as after any move.
        """
        declared = self.spec.states[state].pushed if state in self.spec.states else None
        if declared is None:
            raise ValueError(f"state {state!r} is not declared `pushed:` in the flow")
        if missing := set(declared) - set(data or {}):
            raise ValueError(f"pushing {state!r} needs {sorted(missing)}")
        where = Where(bot, chat_id, User(id=user_id, is_bot=False, first_name=str(user_id)))
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.load_or_create(where)
            moved = Snapshot(state, snap.counter + 1, snap.locale, {**snap.data, **(data or {})})
            if await self.store.save(where.key, moved, snap.counter):
                await self.send(where, moved)
                return
        raise RuntimeError(f"conversation {where.key} is changing too fast to push")

    # ---- taps ----------------------------------------------------------------

    async def on_callback(self, where: Where, query: CallbackQuery, answer: Answer) -> None:
        message = query.message if isinstance(query.message, Message) else None
        snap = await self.load_or_create(where)
        tap = callback_data.decode(query.data)
        if (
            tap is None
            or tap.version != self.version
            or not callback_data.same_counter(tap, snap.counter)
        ):
            await self.stale(where, snap, message, answer)
            return
        await self.move(where, snap, tap, message, answer)

    async def stale(
        self, where: Where, snap: Snapshot, message: Message | None, answer: Answer
    ) -> None:
        await answer(self.renderer.system("stale", snap.locale))
        await self.show(where, snap, message)

    async def move(
        self, where: Where, snap: Snapshot, tap: Tap, message: Message | None, answer: Answer
    ) -> None:
        state = snap.state
        data = snap.data
        action: str | None = None
        args: dict[str, Any] = {}
        if tap.button == callback_data.BACK_ID:
            trigger = BACK
        elif tap.button == callback_data.MAIN_ID:
            trigger = MAIN
        elif tap.button == callback_data.OPTION_ID:
            options = self.spec.states[state].options
            assert tap.value is not None
            if options is None or not await self.option_exists(where, snap, tap.value):
                await self.stale(where, snap, message, answer)
                return
            trigger, action = OPTION, options.action
            data = {**data, options.store: tap.value}
        else:
            button = self._buttons.get((state, tap.button))
            if button is None:
                await self.stale(where, snap, message, answer)
                return
            trigger, action, args = button_trigger(button.id), button.action, dict(button.args)
            if button.set:
                data = {**data, **button.set}
        dests = self.graph.dests(state, trigger)
        if not dests:
            await self.stale(where, snap, message, answer)
            return
        if action is not None:
            await self.run_action(where, snap, action, args, data, dests, message, answer)
            return
        moved = Snapshot(dests[0], snap.counter + 1, snap.locale, data)
        if not await self.store.save(where.key, moved, snap.counter):
            await self.stale(where, await self.load_or_create(where), message, answer)
            return
        await answer()
        await self.show(where, moved, message)

    async def option_exists(self, where: Where, snap: Snapshot, value: str) -> bool:
        options = self.spec.states[snap.state].options
        assert options is not None
        found = await self.renderer.options(self.context(where, snap), options)
        return any(o.value == value for o in found)

    async def run_action(
        self,
        where: Where,
        snap: Snapshot,
        name: str,
        args: dict[str, Any],
        data: dict[str, Any],
        allowed: tuple[str, ...],
        message: Message | None,
        answer: Answer,
    ) -> None:
        """Claim, run, save: the claim is what makes a second tap unable to run it again.

        `allowed[0]` is where the action goes by default (the button's `to`, or
        its own state); an action may pick any other declared outcome.
        """
        action = self.registry.actions.get(name)
        if action is None:
            await answer(self.renderer.system("coming_soon", snap.locale))
            return
        claimed = Snapshot(snap.state, snap.counter + 1, snap.locale, snap.data)
        if not await self.store.save(where.key, claimed, snap.counter):
            await self.stale(where, await self.load_or_create(where), message, answer)
            return
        ctx = self.context(where, claimed, args)
        ctx.data = dict(data)
        ctx.run_key = f"{where.key}:{claimed.counter}"
        try:
            outcome = await action(ctx) or Outcome()
            dest = outcome.to or allowed[0]
            if dest not in allowed:
                raise ValueError(f"action {name!r} chose undeclared state {dest!r}")
        except Exception:
            error_id = secrets.token_hex(3)
            log.exception("action %s failed [error %s] in %s", name, error_id, where.key)
            text = self.renderer.system("error", snap.locale).format(error_id=error_id)
            await answer(text, show_alert=True)
            await self.show(where, claimed, message)
            return
        done = Snapshot(dest, claimed.counter + 1, snap.locale, ctx.data)
        if not await self.store.save(where.key, done, claimed.counter):
            # Someone (a /start) moved the conversation while the action ran.
            await self.stale(where, await self.load_or_create(where), message, answer)
            return
        await self.answer_outcome(outcome, snap.locale, answer)
        await self.show(where, done, message)

    async def answer_outcome(self, outcome: Outcome, locale: str, answer: Answer) -> None:
        if outcome.notice:
            text = self.renderer.product_text(outcome.notice, locale)
            await answer(text, show_alert=outcome.notice_alert)
        else:
            await answer()

    # ---- messages ------------------------------------------------------------

    async def on_message(self, where: Where, message: Message) -> None:
        snap = await self.load_or_create(where)
        st: State = self.spec.states[snap.state]
        if st.input is None:
            hint = self.renderer.system("unexpected_input", snap.locale)
            await self.send(where, snap, prefix=hint)
            return
        try:
            value = read_input(st.input, message)
        except InputRejected:
            error = self.renderer.local(st.input.error, snap.locale)
            await self.send(where, snap, prefix=error)
            return
        data = {**snap.data, st.input.store: value}
        if st.input.action is not None:

            async def notify(text: str | None = None, show_alert: bool = False) -> None:
                # A message has no callback to answer: a notice is a message of its own.
                if text:
                    await where.bot.send_message(where.chat_id, text)

            allowed = self.graph.dests(snap.state, INPUT)
            await self.run_action(where, snap, st.input.action, {}, data, allowed, None, notify)
            return
        dest = self.graph.dests(snap.state, INPUT)[0]
        moved = Snapshot(dest, snap.counter + 1, snap.locale, data)
        if not await self.store.save(where.key, moved, snap.counter):
            current = await self.load_or_create(where)
            await self.send(where, current, prefix=self.renderer.system("stale", snap.locale))
            return
        await self.send(where, moved)
