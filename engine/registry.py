"""The typed interface through which a product plugs into the engine.

The engine never imports the product: the product builds a `Registry`, fills
it with the actions and providers that `flows.yaml` names, and hands it over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.spec import ArgValue

if TYPE_CHECKING:  # `trt flows check` reads the registry's names: no aiogram there
    from aiogram import Bot


@dataclass(frozen=True, slots=True)
class Option:
    """One button of a dynamic list; `label` is plain text or a text per locale."""

    value: str
    label: str | Mapping[str, str]


@dataclass(slots=True)
class Context:
    """What an action or provider sees of the conversation.

    `data` is the conversation's stored data; an action may change it and the
    change is saved with the transition (or dropped if the action raises).
    `run_key` is unique to one run of an action (the conversation and the screen
    it claimed); a product uses it as the idempotency key of what the action starts.
    """

    bot: Bot
    user_id: int
    chat_id: int
    locale: str
    state: str
    data: dict[str, Any]
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    text: Callable[[str], str] = field(default=lambda key: key)
    run_key: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """An action's result: an optional other destination and a short notice.

    `to` must be the button's `to` or one of its declared `outcomes`;
    `notice` is a key of the `texts:` section of flows.yaml.
    """

    to: str | None = None
    notice: str | None = None
    notice_alert: bool = False


Action = Callable[[Context], Awaitable[Outcome | None]]
DataProvider = Callable[[Context], Awaitable[Mapping[str, object]]]
OptionsProvider = Callable[[Context], Awaitable[Sequence[Option]]]


TextKind = Literal["message", "notice", "caption"]


@dataclass(frozen=True, slots=True)
class TextUse:
    """How the product shows one of flows.yaml's `texts:`, so that the checker can hold
    it to Telegram's limit for that place: a message (4096, HTML), a notice on a tapped
    button (200, plain text), a media caption (1024, HTML). `values` gives the longest
    value of each placeholder the product fills."""

    kind: TextKind = "message"
    values: Mapping[str, int] = field(default_factory=dict)


class Registry:
    """Names from flows.yaml mapped to the product's coroutines."""

    def __init__(self) -> None:
        self.actions: dict[str, Action] = {}
        self.data_providers: dict[str, DataProvider] = {}
        self.options_providers: dict[str, OptionsProvider] = {}
        # The texts the product's Python shows, by key: `trt flows check` proves each
        # is in every locale and within its place's limit.
        self.texts: dict[str, TextUse] = {}

    def uses_text(self, key: str, kind: TextKind = "message", **values: int) -> None:
        self.texts[key] = TextUse(kind, values)

    def action(self, name: str) -> Callable[[Action], Action]:
        def register(func: Action) -> Action:
            self._claim(name)
            self.actions[name] = func
            return func

        return register

    def data(self, name: str) -> Callable[[DataProvider], DataProvider]:
        def register(func: DataProvider) -> DataProvider:
            self._claim(name)
            self.data_providers[name] = func
            return func

        return register

    def options(self, name: str) -> Callable[[OptionsProvider], OptionsProvider]:
        def register(func: OptionsProvider) -> OptionsProvider:
            self._claim(name)
            self.options_providers[name] = func
            return func

        return register

    def has_provider(self, name: str) -> bool:
        return name in self.data_providers or name in self.options_providers

    def _claim(self, name: str) -> None:
        if name in self.actions or self.has_provider(name):
            raise ValueError(f"{name!r} is registered twice")
