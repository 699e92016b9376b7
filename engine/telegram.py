"""Wires a `FlowEngine` into aiogram: handlers, exactly-once answers, one error path.

The callback answer lives in an outer middleware on the dispatcher, so it
runs for every callback query, matched or not, and its `finally` answers the
query when nothing else did. A failing answer is logged, never raised, so it
cannot hide the handler's own error (the flaw of aiogram's own
CallbackAnswerMiddleware).

An error that a later delivery can cure (the product says which: the database
being down) still gets the user an apology, and then `UpdateNotProcessed` is
raised out of the dispatcher, so the transport does not acknowledge the update
and Telegram delivers it again. The engine knows the same predicate, so that
such an error inside an action reaches here instead of being apologised for and
acknowledged there (its redelivery finishes the action). A user who blocked the
bot gets no apology: it could not reach them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramForbiddenError
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import CallbackQuery, Message, TelegramObject, Update, User

from engine.runtime import FlowEngine, RetryLater, Where, conversation_key

__all__ = [
    "AnswerOnce",
    "RetryLater",
    "UpdateNotProcessed",
    "build_router",
    "conversation_of",
    "install",
]

log = logging.getLogger("engine")

# Telegram's refusal of a second answer, or of one that came too late.
QUERY_GONE = "query is too old"

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UpdateNotProcessed(Exception):
    """The update failed for a reason a redelivery can cure; the user was told already."""

    def __init__(self, error_id: str) -> None:
        super().__init__(error_id)
        self.error_id = error_id


class AnswerOnce:
    """Answers one callback query at most once per delivery, whoever calls it first.

    Across deliveries an answer is at least once: a delivery killed after its answer
    and before its acknowledgement is answered again by its redelivery, which Telegram
    refuses ("query is too old") and the user never sees. Where the engine knows of an
    earlier answer (engine.marks `answered`), it sets `done` and nothing is sent."""

    __slots__ = ("bot", "done", "error", "query_id", "sent")

    def __init__(self, bot: Bot, query_id: str) -> None:
        self.bot = bot
        self.query_id = query_id
        self.done = False
        self.sent = False  # Telegram took this delivery's answer
        self.error: TelegramAPIError | None = None  # why the one answer failed, if it did

    async def __call__(self, text: str | None = None, show_alert: bool = False) -> None:
        if self.done:
            return
        self.done = True
        try:
            await self.bot.answer_callback_query(self.query_id, text=text, show_alert=show_alert)
        except TelegramBadRequest as exc:
            self.error = exc
            if QUERY_GONE in exc.message:
                # Answered by an earlier delivery, or too late to answer: either way done.
                log.info("callback %s was answered before or expired", self.query_id)
            else:
                log.warning("answerCallbackQuery %s failed: %s", self.query_id, exc)
        except TelegramAPIError as exc:
            self.error = exc
            log.warning("answerCallbackQuery %s failed: %s", self.query_id, exc)
        else:
            self.sent = True


def where_of(bot: Bot, query: CallbackQuery) -> Where:
    return Where(bot, _chat_of(query), query.from_user)


def _chat_of(query: CallbackQuery) -> int:
    return query.message.chat.id if query.message is not None else query.from_user.id


def conversation_of(update: Update) -> str | None:
    """The store key of the conversation the engine will load for `update` (a tap or a
    message from a user), so that a transport may read it ahead; None for other updates."""
    if update.callback_query is not None:
        query = update.callback_query
        return conversation_key(_chat_of(query), query.from_user.id)
    message = update.message
    if message is not None and message.from_user is not None:
        return conversation_key(message.chat.id, message.from_user.id)
    return None


def _locale(engine: FlowEngine, user: User | None) -> str:
    return engine.locale_of(user) if user else engine.spec.default_locale


def _error_text(engine: FlowEngine, user: User | None) -> tuple[str, str]:
    return engine.apology(_locale(engine, user))


class CallbackAnswers(BaseMiddleware):
    """Reads the predicate from the engine, so the two never disagree."""

    def __init__(self, engine: FlowEngine) -> None:
        self.engine = engine

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, CallbackQuery)
        answer = AnswerOnce(data["bot"], event.id)
        data["answer"] = answer
        result: Any = None
        try:
            result = await handler(event, data)
        except TelegramForbiddenError as exc:
            log.info("callback %s: the user blocked the bot (%s)", event.id, exc.message)
        except Exception as exc:
            error_id, text = _error_text(self.engine, event.from_user)
            log.exception("callback %s failed [error %s]", event.id, error_id)
            await answer(text, show_alert=True)
            if self.engine.retry_later(exc):
                if answer.sent:
                    await self.engine.note_answered(where_of(data["bot"], event), f"q:{event.id}")
                raise UpdateNotProcessed(error_id) from exc
        finally:
            await answer()
        if answer.error is not None and self.engine.retry_later(answer.error):
            # The answer did not reach Telegram for now (the spinner still turns): refuse
            # the update, so that its redelivery, which finds the work done, answers it.
            raise UpdateNotProcessed("unanswered") from answer.error
        return result


class MessageErrors(BaseMiddleware):
    """A failing message handler still gets the user an apology with an error id."""

    def __init__(self, engine: FlowEngine) -> None:
        self.engine = engine

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Message)
        try:
            return await handler(event, data)
        except TelegramForbiddenError as exc:
            log.info("message %s: the user blocked the bot (%s)", event.message_id, exc.message)
            return None
        except Exception as exc:
            error_id, text = _error_text(self.engine, event.from_user)
            log.exception("message %s failed [error %s]", event.message_id, error_id)
            try:
                await data["bot"].send_message(event.chat.id, text)
            except TelegramAPIError as apology_failed:
                log.warning("could not send the apology for %s: %s", error_id, apology_failed)
            if self.engine.retry_later(exc):
                raise UpdateNotProcessed(error_id) from exc
            return None


def build_router(engine: FlowEngine) -> Router:
    router = Router(name="flows")

    @router.message(CommandStart())
    async def on_start(message: Message, bot: Bot) -> None:
        if message.from_user is not None:
            await engine.start(Where(bot, message.chat.id, message.from_user))

    if engine.spec.commands:

        @router.message(Command(*engine.spec.commands))
        async def on_command(message: Message, bot: Bot, command: CommandObject) -> None:
            if message.from_user is not None:
                where = Where(bot, message.chat.id, message.from_user)
                await engine.command(where, command.command.lower())

    @router.callback_query()
    async def on_tap(query: CallbackQuery, bot: Bot, answer: AnswerOnce) -> None:
        await engine.on_callback(where_of(bot, query), query, answer)

    @router.message()
    async def on_message(message: Message, bot: Bot) -> None:
        if message.from_user is not None:
            await engine.on_message(Where(bot, message.chat.id, message.from_user), message)

    return router


def install(
    dispatcher: Dispatcher, engine: FlowEngine, retry_later: RetryLater | None = None
) -> None:
    """Answers and errors at the dispatcher, so product routers included later are covered too.

    `retry_later` picks the errors after which the update is not acknowledged; given
    here, it becomes the engine's too (see FlowEngine), else the engine's is used."""
    if retry_later is not None:
        engine.retry_later = retry_later
    dispatcher.callback_query.outer_middleware(CallbackAnswers(engine))
    dispatcher.message.outer_middleware(MessageErrors(engine))
    dispatcher.include_router(build_router(engine))
