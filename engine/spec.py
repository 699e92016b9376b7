"""The shape of `flows.yaml`, as typed models.

Unknown keys are rejected (``extra="forbid"``) so a typo in an editor's file
is a checker error with a line number, not a silently ignored setting.
Cross-references (targets, actions, providers) are checked in `checker.py`,
because they need the whole file and the product's registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
# Button ids travel inside callback data, so they are kept short.
ButtonId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,12}$")]
# A text per locale: {"ru": "...", "en": "..."}.
LocalizedText = dict[str, str]
InputKind = Literal["text", "photo", "video", "audio", "document"]
ArgValue = str | int | float | bool

# `{name}`, or `{name:.N}` to show at most N characters of the value.
PLACEHOLDER = re.compile(r"(?<!\{)\{([a-zA-Z_][a-zA-Z0-9_]*)(?::\.[0-9]+)?\}(?!\})")


def localized(text: Mapping[str, str], locale: str, fallback: str) -> str:
    """A text in `locale`, else in the fallback locale, else in any: never empty-handed."""
    return text.get(locale) or text.get(fallback) or next(iter(text.values()))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Button(_Strict):
    """A button goes to a state, runs an action, or both (action first)."""

    id: ButtonId
    text: LocalizedText
    to: Identifier | None = None
    action: Identifier | None = None
    args: dict[str, ArgValue] = Field(default_factory=dict)
    # Values stored in the conversation's data when the button is tapped.
    set: dict[Identifier, ArgValue] = Field(default_factory=dict)
    # States an action may send the user to instead of `to`; declared so the
    # checker and the path generator see every edge the action can take.
    outcomes: list[Identifier] = Field(default_factory=list)


class Options(_Strict):
    """A dynamic list of buttons supplied by a named provider at render time."""

    provider: Identifier
    args: dict[str, ArgValue] = Field(default_factory=dict)
    store: Identifier
    to: Identifier
    # Runs after the chosen value is stored, before moving to `to`.
    action: Identifier | None = None
    columns: int = Field(default=1, ge=1, le=8)
    # The longest value the provider may return; the checker proves that the
    # callback data stays within Telegram's 64 bytes with it.
    max_value_length: int = Field(default=24, ge=1, le=64)
    # Shown when the provider returns nothing, so the screen is never blank.
    empty_text: LocalizedText | None = None


class Input(_Strict):
    """What the state accepts as a message, how it is checked, and where it goes."""

    accept: list[InputKind] = Field(min_length=1)
    store: Identifier
    next: Identifier
    min_length: int = Field(default=1, ge=0)
    max_length: int = Field(default=4000, ge=1, le=100_000)
    max_size_mb: float = Field(default=20, gt=0, le=2000)
    mime_types: list[str] = Field(default_factory=list)
    error: LocalizedText
    # A valid value the path tests may type; required for text inputs.
    example: str | None = None
    # Runs after the value is stored (a promo code to redeem); like a button's, it may
    # go to one of `outcomes` instead of `next`.
    action: Identifier | None = None
    outcomes: list[Identifier] = Field(default_factory=list)


class State(_Strict):
    text: LocalizedText
    parent: Identifier | None = None
    back: Identifier | None = None
    data: list[Identifier] = Field(default_factory=list)
    buttons: list[list[Button]] = Field(default_factory=list)
    options: Options | None = None
    input: Input | None = None
    # Shown by the product from outside an update (FlowEngine.push), e.g. a finished
    # job: the data keys the product passes. Such a state counts as reachable, and
    # only such states may be pushed.
    # Like a provider's `provides`, each key may carry its longest value: `{job_model: 80}`.
    pushed: list[Identifier] | dict[Identifier, Annotated[int, Field(ge=1, le=4096)]] | None = None


class Declared(_Strict):
    """An action or provider named in the file; Python may implement it later."""

    description: str = ""
    # The values a provider gives, each with the most characters it shows
    # (`{balance: 32}`): what lets the checker prove a screen fits Telegram's limit.
    # The engine cuts a longer value. A bare list declares names without lengths,
    # which the checker refuses for any value a text shows.
    provides: list[str] | dict[str, Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=list
    )


class SystemTexts(_Strict):
    back: LocalizedText
    main_menu: LocalizedText
    stale: LocalizedText
    error: LocalizedText
    unexpected_input: LocalizedText
    coming_soon: LocalizedText
    busy: LocalizedText


class FlowSpec(_Strict):
    locales: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")]] = Field(min_length=1)
    fallback_locale: str
    root: Identifier
    system: SystemTexts
    actions: dict[Identifier, Declared] = Field(default_factory=dict)
    providers: dict[Identifier, Declared] = Field(default_factory=dict)
    # Texts the product's actions show (notices, errors); kept here, not in Python.
    texts: dict[Identifier, LocalizedText] = Field(default_factory=dict)
    # Chat commands besides /start and the screen each opens: `help: help` makes /help
    # show the help state as a new message.
    commands: dict[Identifier, Identifier] = Field(default_factory=dict)
    states: dict[Identifier, State] = Field(min_length=1)

    @property
    def default_locale(self) -> str:
        return self.locales[0]


# Every key the file may use, for "did you mean" on a mistyped one.
KEYS = frozenset(
    name
    for model in (Button, Options, Input, State, Declared, SystemTexts, FlowSpec)
    for name in model.model_fields
)
