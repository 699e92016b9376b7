"""The conversation engine: one update in, one compare-and-set move, one screen out.

Order of work for a tap: decode, load, check the screen is current, claim the
move with compare-and-set, run the action, save, answer, render. A tap that
loses the compare-and-set (double tap, old message, old deploy, a second
process) is answered with a notice and shown the current screen; it never
runs an action, so no action runs twice for one screen.

The claim records the pending run (engine.marks), so the same update delivered
again after an outage finishes it under the same run key instead of finding
the menu out of date; an outage inside an action is therefore raised, not
apologised away, so that the transport refuses the update and Telegram
delivers it again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, Message, User

from engine import callback_data
from engine.callback_data import Tap
from engine.graph import BACK, INPUT, MAIN, OPTION, FlowGraph, button_trigger
from engine.input_check import InputRejected, read_input
from engine.loader import LoadedFlow
from engine.marks import Marks, PendingRun, digest, product_data
from engine.outbox import Outbox
from engine.registry import Context, Outcome, Registry
from engine.render import Renderer, Screen
from engine.spec import Button, State
from engine.store import Snapshot, StateStore

log = logging.getLogger("engine")

Answer = Callable[..., Awaitable[None]]


class TapAnswer(Protocol):
    """A callback query's answer; `done` set means it needs none (answered already)."""

    done: bool

    async def __call__(self, text: str | None = None, show_alert: bool = False) -> None: ...


RetryLater = Callable[[BaseException], bool]
_CAS_ATTEMPTS = 5


def never(_: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Where:
    """The conversation an update belongs to."""

    bot: Bot
    chat_id: int
    user: User

    @property
    def key(self) -> str:
        return conversation_key(self.chat_id, self.user.id)


def conversation_key(chat_id: int, user_id: int) -> str:
    """The store's key of a conversation: one per user in each chat."""
    return f"{chat_id}:{user_id}"


class FlowEngine:
    def __init__(
        self,
        flow: LoadedFlow,
        registry: Registry,
        store: StateStore,
        retry_later: RetryLater = never,
        outbox: Outbox | None = None,
    ) -> None:
        """`retry_later` tells which errors a later delivery of the update can cure (the
        product's database being down); `engine.telegram.install` may set it too.
        `outbox` is the one the product's services were built with: this engine serves it."""
        self.flow = flow
        self.spec = flow.spec
        self.version = flow.version
        self.registry = registry
        self.store = store
        self.retry_later = retry_later
        self.graph = FlowGraph(flow.spec)
        self.renderer = Renderer(flow, registry)
        self._buttons: dict[tuple[str, str], Button] = {
            (name, b.id): b
            for name, st in flow.spec.states.items()
            for row in st.buttons
            for b in row
        }
        if outbox is not None:
            outbox.serve(self)

    # ---- helpers -------------------------------------------------------------

    def locale_of(self, user: User) -> str:
        code = (user.language_code or "").split("-")[0].lower()
        if code in self.spec.locales:
            return code
        return self.spec.fallback_locale if code else self.spec.default_locale

    def text(self, key: str, locale: str) -> str:
        return self.renderer.product_text(key, locale)

    def apology(self, locale: str) -> tuple[str, str]:
        """A fresh error id (for the log) and the error text that shows it to the user."""
        error_id = secrets.token_hex(3)
        return error_id, self.renderer.system("error", locale).format(error_id=error_id)

    def context(self, where: Where, snap: Snapshot, args: dict[str, Any] | None = None) -> Context:
        locale = snap.locale
        return Context(
            bot=where.bot,
            user_id=where.user.id,
            chat_id=where.chat_id,
            locale=locale,
            state=snap.state,
            data=product_data(snap.data),
            args=args or {},
            text=lambda key: self.renderer.product_text(key, locale),
        )

    async def screen(self, where: Where, snap: Snapshot) -> Screen:
        return await self.renderer.render(
            snap.state, snap.counter, snap.locale, lambda: self.context(where, snap)
        )

    async def remember(
        self, where: Where, snap: Snapshot, message_id: int, shown: str, forget: int | None = None
    ) -> None:
        """Notes what a message now shows, in place (same counter, so no button goes
        stale). Best effort: losing the race or the database costs one refused edit
        later, never the update, which has done its work already."""
        marks = Marks.of(snap)
        entry = marks.entry(message_id)
        if entry is not None and entry[1] == shown and forget is None:
            return
        if forget is not None:
            marks = marks.forgetting(forget)
        await self.note(where, snap, marks.showing(message_id, shown))

    async def note(self, where: Where, snap: Snapshot, marks: Marks) -> None:
        """Writes advisory marks in place (same counter, so no button goes stale)."""
        noted = Snapshot(snap.state, snap.counter, snap.locale, marks.apply(snap.data))
        try:
            await self.store.save(where.key, noted, snap.counter)
        except Exception as exc:
            log.info("could not note %s in %s: %r", marks.dump().keys(), where.key, exc)

    async def note_answered(self, where: Where, source: str) -> None:
        """The update (`q:<query id>`, `m:<message id>`) was answered (its callback, or its
        notice sent) by a delivery about to be refused: its redelivery must not answer
        again. Best effort, like every mark but the pending run."""
        try:
            snap = await self.store.load(where.key)
        except Exception as exc:
            log.info("could not note %s as answered: %r", source, exc)
            return
        if snap is not None:
            await self.note(where, snap, Marks.of(snap).answering(source))

    async def send(self, where: Where, snap: Snapshot, prefix: str | None = None) -> None:
        screen = await self.screen(where, snap)
        text = f"{prefix}\n\n{screen.text}" if prefix else screen.text
        sent = await where.bot.send_message(where.chat_id, text, reply_markup=screen.markup)
        await self.remember(where, snap, sent.message_id, digest(text, screen.markup))

    async def show(
        self,
        where: Where,
        snap: Snapshot,
        message: Message | None,
        source: str | None = None,
        screen: Screen | None = None,
    ) -> None:
        """Put the screen on the tapped message; a new message when that cannot be edited.

        Not at all when the message shows it already: Telegram would refuse the edit."""
        if screen is None:
            screen = await self.screen(where, snap)
        shown = digest(screen.text, screen.markup)
        if message is not None:
            if Marks.of(snap).shows(message.message_id, shown, source):
                return
            try:
                await where.bot.edit_message_text(
                    text=screen.text,
                    chat_id=where.chat_id,
                    message_id=message.message_id,
                    reply_markup=screen.markup,
                )
            except TelegramBadRequest as exc:
                if "not modified" in exc.message:
                    await self.remember(where, snap, message.message_id, shown)
                    return
                log.info("edit failed, sending a new message: %s", exc.message)
            else:
                await self.remember(where, snap, message.message_id, shown)
                return
        sent = await where.bot.send_message(where.chat_id, screen.text, reply_markup=screen.markup)
        forget = message.message_id if message is not None else None
        await self.remember(where, snap, sent.message_id, shown, forget=forget)

    async def show_or_undo(
        self,
        where: Where,
        before: Snapshot,
        after: Snapshot,
        message: Message | None,
        source: str,
        screen: Screen | None = None,
    ) -> None:
        """Shows the screen a move led to; if Telegram refuses it (markup it cannot
        parse, a text over its limit), the move is undone: the user stays where they
        were, told so with an error id, and the conversation is not stuck on a screen
        that cannot show (every later tap would be "out of date")."""
        try:
            await self.show(where, after, message, source, screen)
        except TelegramBadRequest as exc:
            error_id, text = self.apology(before.locale)
            log.error(
                "screen %s refused by Telegram [error %s] in %s: %s",
                after.state,
                error_id,
                where.key,
                exc.message,
            )
            back = Snapshot(
                before.state,
                after.counter + 1,
                before.locale,
                Marks.of(after).moved().apply(product_data(before.data)),
            )
            if not await self.store.save(where.key, back, after.counter):
                back = await self.load_or_create(where, fresh=True)
            await self.send(where, back, prefix=text)

    async def load_or_create(self, where: Where, fresh: bool = False) -> Snapshot:
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.store.load(where.key, fresh)
            if snap is not None:
                if snap.state not in self.spec.states:
                    # The state was removed by a deploy: start over at the root.
                    root = Snapshot(self.spec.root, snap.counter + 1, snap.locale, {})
                    if await self.store.save(where.key, root, snap.counter):
                        return root
                    continue
                return snap
            first = Snapshot(self.spec.root, 1, self.locale_of(where.user), {})
            if await self.store.save(where.key, first, None):
                return first
        raise RuntimeError(f"conversation {where.key} is changing too fast to load")

    # ---- /start --------------------------------------------------------------

    async def start(self, where: Where) -> None:
        """Reset to the root whatever happened before; a new message, old ones go stale."""
        await self.open(where, self.spec.root, fresh=True)

    async def command(self, where: Where, name: str) -> None:
        """A command flows.yaml declares (`/help`): its screen as a new message, the
        conversation's data kept, older screens stale as after any move."""
        await self.open(where, self.spec.commands[name], fresh=False)

    async def open(self, where: Where, state: str, *, fresh: bool) -> None:
        """`fresh`: forget the data and read the user's language again (/start)."""
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.store.load(where.key)
            marks = Marks.of(snap).moved() if snap else Marks()
            data = product_data(snap.data) if snap and not fresh else {}
            locale = snap.locale if snap and not fresh else self.locale_of(where.user)
            moved = Snapshot(state, (snap.counter + 1) if snap else 1, locale, marks.apply(data))
            if await self.store.save(where.key, moved, snap.counter if snap else None):
                await self.send(where, moved)
                return
        raise RuntimeError(f"conversation {where.key} is changing too fast to open {state}")

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
        the user now is; older screens go stale as after any move, and so does a tap
        still pending (the user is elsewhere now).
        """
        declared = self.spec.states[state].pushed if state in self.spec.states else None
        if declared is None:
            raise ValueError(f"state {state!r} is not declared `pushed:` in the flow")
        if missing := set(declared) - set(data or {}):
            raise ValueError(f"pushing {state!r} needs {sorted(missing)}")
        where = Where(bot, chat_id, User(id=user_id, is_bot=False, first_name=str(user_id)))
        for _ in range(_CAS_ATTEMPTS):
            snap = await self.load_or_create(where)
            merged = {**product_data(snap.data), **(data or {})}
            moved = Snapshot(
                state, snap.counter + 1, snap.locale, Marks.of(snap).moved().apply(merged)
            )
            if await self.store.save(where.key, moved, snap.counter):
                await self.send(where, moved)
                return
        raise RuntimeError(f"conversation {where.key} is changing too fast to push")

    # ---- taps ----------------------------------------------------------------

    async def on_callback(self, where: Where, query: CallbackQuery, answer: TapAnswer) -> None:
        message = query.message if isinstance(query.message, Message) else None
        source = f"q:{query.id}"
        tap = callback_data.decode(query.data)
        snap = await self.load_or_create(where)
        if snap.cached and not self.plain_tap(snap, tap, source):
            # Only a move (its compare-and-set) may act on a copy; a stale toast or a
            # repeated answer is decided on the stored row.
            snap = await self.load_or_create(where, fresh=True)
        if source in Marks.of(snap).answered:
            answer.done = True
        if await self.redelivered(where, snap, source, message, answer):
            return
        if tap is None or not self.current_tap(snap, tap):
            await self.stale(where, snap, message, answer, source)
            return
        await self.move(where, snap, tap, message, answer, source)

    def current_tap(self, snap: Snapshot, tap: Tap | None) -> bool:
        """A button of this deploy on the screen the conversation is on."""
        return (
            tap is not None
            and tap.version == self.version
            and callback_data.same_counter(tap, snap.counter)
        )

    def plain_tap(self, snap: Snapshot, tap: Tap | None, source: str) -> bool:
        """A first tap on the current screen: what a move follows from."""
        marks = Marks.of(snap)
        return (
            self.current_tap(snap, tap)
            and source not in marks.answered
            and marks.by != source
            and (marks.run is None or marks.run.by != source)
        )

    async def redelivered(
        self,
        where: Where,
        snap: Snapshot,
        source: str,
        message: Message | None,
        answer: Answer,
    ) -> bool:
        """Whether this update (`source`) came before: an action an outage cut off is
        finished now; a move already made is answered and shown as the first time."""
        marks = Marks.of(snap)
        if marks.run is not None and marks.run.by == source and self.resumable(marks.run):
            await self.finish(where, snap, marks.run, message, answer)
            return True
        if marks.by == source:
            await self.handled_already(where, snap, message, answer)
            return True
        return False

    async def handled_already(
        self, where: Where, snap: Snapshot, message: Message | None, answer: Answer
    ) -> None:
        """A redelivery of the update that made the current screen: its work is done;
        what may be missing is the answer and the screen."""
        marks = Marks.of(snap)
        if marks.notice is not None:
            key, alert = marks.notice
            await answer(self.renderer.product_text(key, snap.locale), show_alert=alert)
        else:
            await answer()
        await self.show(where, snap, message, marks.by)

    async def stale(
        self,
        where: Where,
        snap: Snapshot,
        message: Message | None,
        answer: Answer,
        source: str | None = None,
    ) -> None:
        await answer(self.renderer.system("stale", snap.locale))
        await self.show(where, snap, message, source)

    async def settle(
        self,
        where: Where,
        source: str,
        message: Message | None,
        answer: Answer,
        claimed: int | None = None,
    ) -> None:
        """After losing a compare-and-set: the winner may be this same update delivered
        twice at once (Telegram gave up waiting on a slow first delivery, and another
        process got it), which is not a stale tap. If that delivery claimed the action,
        this one runs it too, under the same run key: acknowledging this one while the
        other fails would lose the tap, and the run key keeps the effect single.
        `claimed`: the counter this delivery claimed itself, never resumed twice."""
        current = await self.load_or_create(where, fresh=True)
        marks = Marks.of(current)
        if marks.by == source:
            await self.handled_already(where, current, message, answer)
        elif (
            marks.run is not None
            and marks.run.by == source
            and current.counter != claimed
            and self.resumable(marks.run)
        ):
            await self.finish(where, current, marks.run, message, answer)
        else:
            await self.stale(where, current, message, answer, source)

    async def move(
        self,
        where: Where,
        snap: Snapshot,
        tap: Tap,
        message: Message | None,
        answer: Answer,
        source: str,
    ) -> None:
        state = snap.state
        changes: dict[str, Any] = {}
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
                await self.stale(where, snap, message, answer, source)
                return
            trigger, action = OPTION, options.action
            changes = {options.store: tap.value}
        else:
            button = self._buttons.get((state, tap.button))
            if button is None:
                await self.stale(where, snap, message, answer, source)
                return
            trigger, action, args = button_trigger(button.id), button.action, dict(button.args)
            changes = dict(button.set)
        dests = self.graph.dests(state, trigger)
        if not dests:
            await self.stale(where, snap, message, answer, source)
            return
        if action is not None:
            run = PendingRun(source, action, args, changes, dests)
            await self.run_action(where, snap, run, message, answer)
            return
        data = {**product_data(snap.data), **changes}
        moved = Snapshot(dests[0], snap.counter + 1, snap.locale, data)
        moved, screen = await self.with_screen(where, moved, Marks.of(snap).moved(source), message)
        if not await self.store.save(where.key, moved, snap.counter):
            await self.settle(where, source, message, answer)
            return
        await answer()
        await self.show_or_undo(where, snap, moved, message, source, screen)

    async def with_screen(
        self, where: Where, snap: Snapshot, marks: Marks, message: Message | None
    ) -> tuple[Snapshot, Screen]:
        """The snapshot with `marks`, noting the screen it is about to put on `message`,
        so that the move and the note are one write."""
        screen = await self.screen(where, snap)
        if message is not None and marks.by is not None:
            marks = marks.showing(message.message_id, digest(screen.text, screen.markup), marks.by)
        return Snapshot(snap.state, snap.counter, snap.locale, marks.apply(snap.data)), screen

    async def option_exists(self, where: Where, snap: Snapshot, value: str) -> bool:
        options = self.spec.states[snap.state].options
        assert options is not None
        found = await self.renderer.options(self.context(where, snap), options)
        return any(o.value == value for o in found)

    def resumable(self, run: PendingRun) -> bool:
        """A deploy may have removed what the pending run needs; then it is dropped."""
        return run.action in self.registry.actions and all(
            s in self.spec.states for s in run.allowed
        )

    async def run_action(
        self,
        where: Where,
        snap: Snapshot,
        run: PendingRun,
        message: Message | None,
        answer: Answer,
    ) -> None:
        """Claim, run, save: the claim is what makes a second tap unable to run it again,
        and what lets the same tap, delivered again, finish it.

        `run.allowed[0]` is where the action goes by default (the button's `to`, or
        its own state); an action may pick any other declared outcome.
        """
        if run.action not in self.registry.actions:
            await answer(self.renderer.system("coming_soon", snap.locale))
            return
        marks = Marks.of(snap).claimed(run)
        claimed = Snapshot(snap.state, snap.counter + 1, snap.locale, marks.apply(snap.data))
        if not await self.store.save(where.key, claimed, snap.counter):
            await self.settle(where, run.by, message, answer)
            return
        await self.finish(where, claimed, run, message, answer)

    async def finish(
        self,
        where: Where,
        claimed: Snapshot,
        run: PendingRun,
        message: Message | None,
        answer: Answer,
    ) -> None:
        """Runs a claimed action, the first time or again after an outage: the run key is
        the claim's, so the product's effects keyed by it happen once."""
        action = self.registry.actions[run.action]
        ctx = self.context(where, claimed, run.args)
        ctx.data = {**ctx.data, **run.changes}
        ctx.run_key = f"{where.key}:{claimed.counter}"
        try:
            outcome = await action(ctx) or Outcome()
            dest = outcome.to or run.allowed[0]
            if dest not in run.allowed:
                raise ValueError(f"action {run.action!r} chose undeclared state {dest!r}")
        except Exception as exc:
            if self.retry_later(exc):
                # The claim and its pending run stay: the update is refused, and its
                # redelivery runs the action again. The apology is the transport's.
                raise
            await self.failed(where, claimed, run, message, answer)
            return
        notice = (outcome.notice, outcome.notice_alert) if outcome.notice else None
        done = Snapshot(dest, claimed.counter + 1, claimed.locale, product_data(ctx.data))
        marks = Marks.of(claimed).moved(run.by, notice)
        done, screen = await self.with_screen(where, done, marks, message)
        if not await self.store.save(where.key, done, claimed.counter):
            # Someone (a /start) moved the conversation while the action ran.
            await self.settle(where, run.by, message, answer, claimed.counter)
            return
        await self.answer_outcome(outcome, claimed.locale, answer)
        await self.show_or_undo(where, claimed, done, message, run.by, screen)

    async def failed(
        self,
        where: Where,
        claimed: Snapshot,
        run: PendingRun,
        message: Message | None,
        answer: Answer,
    ) -> None:
        """A failure a redelivery would not cure: an apology with an id, and the screen
        redrawn with fresh buttons so the user can try again. The pending run is
        dropped, so a stray redelivery does not run the action again."""
        error_id, text = self.apology(claimed.locale)
        log.exception("action %s failed [error %s] in %s", run.action, error_id, where.key)
        await answer(text, show_alert=True)
        again = Snapshot(claimed.state, claimed.counter + 1, claimed.locale, claimed.data)
        again, screen = await self.with_screen(
            where, again, Marks.of(claimed).moved(run.by), message
        )
        if await self.store.save(where.key, again, claimed.counter):
            await self.show(where, again, message, run.by, screen)
        else:
            await self.show(where, await self.load_or_create(where, fresh=True), message, run.by)

    async def answer_outcome(self, outcome: Outcome, locale: str, answer: Answer) -> None:
        if outcome.notice:
            text = self.renderer.product_text(outcome.notice, locale)
            await answer(text, show_alert=outcome.notice_alert)
        else:
            await answer()

    # ---- messages ------------------------------------------------------------

    async def on_message(self, where: Where, message: Message) -> None:
        source = f"m:{message.message_id}"
        # Fresh: a message has no counter of its own for a compare-and-set to check, and
        # may be answered (a hint, an input error) without one.
        snap = await self.load_or_create(where, fresh=True)
        told = source in Marks.of(snap).answered
        sent: list[str] = []

        async def notify(text: str | None = None, show_alert: bool = False) -> None:
            # A message has no callback to answer: a notice is a message of its own, sent
            # once: a redelivery after it was sent does not send it again.
            if text and not told:
                await where.bot.send_message(where.chat_id, text)
                sent.append(text)

        try:
            await self.handle_message(where, message, snap, source, notify)
        except Exception as exc:
            if sent and self.retry_later(exc):
                await self.note_answered(where, source)
            raise

    async def handle_message(
        self, where: Where, message: Message, snap: Snapshot, source: str, notify: Answer
    ) -> None:
        if await self.redelivered(where, snap, source, None, notify):
            return
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
        changes = {st.input.store: value}
        allowed = self.graph.dests(snap.state, INPUT)
        if st.input.action is not None:
            run = PendingRun(source, st.input.action, {}, changes, allowed)
            await self.run_action(where, snap, run, None, notify)
            return
        data = {**product_data(snap.data), **changes}
        moved = Snapshot(
            allowed[0], snap.counter + 1, snap.locale, Marks.of(snap).moved(source).apply(data)
        )
        if not await self.store.save(where.key, moved, snap.counter):
            current = await self.load_or_create(where, fresh=True)
            await self.send(where, current, prefix=self.renderer.system("stale", snap.locale))
            return
        await self.show_or_undo(where, snap, moved, None, source)
