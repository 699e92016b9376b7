"""Screens: a state's text and keyboard for one conversation.

What does not depend on the conversation (labels, button ids, the layout of
Back and Main menu) is prepared once per flow version; a render only joins
the per-screen callback prefix and fills placeholders. Buttons are built with
`model_construct`, skipping validation of values that were validated at load.
"""

from __future__ import annotations

import html
import logging
import string
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from engine import callback_data
from engine.graph import back_target
from engine.loader import LoadedFlow
from engine.registry import Context, Option, Registry
from engine.spec import PLACEHOLDER, Options, localized
from engine.text_limits import clip, value_limits


class MissingText(LookupError):
    """Python asked for a text key that flows.yaml's `texts:` does not have."""

    def __init__(self, key: str) -> None:
        super().__init__(f"flows.yaml has no text {key!r}; declare it with Registry.uses_text")
        self.key = key


log = logging.getLogger(__name__)
# Screens without values, kept per (state, locale, counter): each is some 14 KB of
# pydantic buttons (bench/soak.py), so the least recently used go beyond this many.
STATIC_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Screen:
    text: str
    markup: InlineKeyboardMarkup | None


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    needs_values: bool
    # Buttons built once; a render copies each with its callback data.
    rows: tuple[tuple[tuple[InlineKeyboardButton, str], ...], ...]
    options: Options | None
    data_providers: tuple[str, ...]


class _Values(dict[str, str]):
    """Missing placeholders show a dash rather than break the screen."""

    def __missing__(self, key: str) -> str:
        return "—"


class _HtmlFormatter(string.Formatter):
    """Fills a text's placeholders with escaped values, so that no value can break the
    markup; `{name:.N}` cuts the value before escaping (never inside an `&amp;`)."""

    def format_field(self, value: object, format_spec: str) -> str:
        text = str(value)
        if format_spec.startswith(".") and format_spec[1:].isdigit():
            text = text[: int(format_spec[1:])]
        return html.escape(text, quote=False)


_FORMAT = _HtmlFormatter()


class Renderer:
    def __init__(self, flow: LoadedFlow, registry: Registry) -> None:
        self.version = flow.version
        self.spec = flow.spec
        self.registry = registry
        self.limits = value_limits(flow.spec)
        self._templates: dict[tuple[str, str], _Template] = {}
        # Screens with neither placeholders nor options depend only on the
        # counter; counters are small numbers shared by many conversations.
        self._static: OrderedDict[tuple[str, str, int], Screen] = OrderedDict()
        for name, st in self.spec.states.items():
            for locale in self.spec.locales:
                rows = [[(b.text, b.id) for b in row] for row in st.buttons]
                if back_target(self.spec, name) is not None:
                    rows.append(
                        [
                            (self.spec.system.back, callback_data.BACK_ID),
                            (self.spec.system.main_menu, callback_data.MAIN_ID),
                        ]
                    )
                built = tuple(
                    tuple(
                        (
                            InlineKeyboardButton(text=self.local(label, locale), callback_data="-"),
                            bid,
                        )
                        for label, bid in row
                    )
                    for row in rows
                )
                text = self.local(st.text, locale)
                self._templates[name, locale] = _Template(
                    text=text,
                    needs_values=bool(PLACEHOLDER.search(text)),
                    rows=built,
                    options=st.options,
                    data_providers=tuple(st.data),
                )

    def local(self, text: Mapping[str, str], locale: str) -> str:
        return localized(text, locale, self.spec.fallback_locale)

    def label(self, option: Option, locale: str) -> str:
        return option.label if isinstance(option.label, str) else self.local(option.label, locale)

    def system(self, name: str, locale: str) -> str:
        text: dict[str, str] = getattr(self.spec.system, name)
        return self.local(text, locale)

    def product_text(self, key: str, locale: str) -> str:
        """A text of `texts:`. A key the flow lacks is a bug, never shown to a user as
        the key itself: the product declares the keys it uses (Registry.uses_text), the
        checker proves each exists, and an undeclared one raises here."""
        text = self.spec.texts.get(key)
        if not text:
            raise MissingText(key)
        return self.local(text, locale)

    async def options(self, ctx: Context, options: Options) -> list[Option]:
        provider = self.registry.options_providers.get(options.provider)
        if provider is None:
            return []
        ctx.args = options.args
        found = []
        for option in await provider(ctx):
            # The value is the last field of the callback data, so it may contain ":".
            if len(option.value.encode()) > options.max_value_length:
                log.warning("option value %r of %s dropped", option.value, options.provider)
                continue
            found.append(option)
        return found

    async def render(
        self, state: str, counter: int, locale: str, context: Callable[[], Context]
    ) -> Screen:
        """The screen; `context` is called only when a provider needs it."""
        tpl = self._templates[state, locale]
        static = not tpl.needs_values and tpl.options is None
        if static:
            cached = self._static.get((state, locale, counter))
            if cached is not None:
                self._static.move_to_end((state, locale, counter))
                return cached
        text = tpl.text
        ctx = None if static else context()
        if ctx is not None and tpl.needs_values:
            # Each value cut to its declared length: the bound `trt flows check` proved
            # the screen with.
            most = self.limits.get
            values = _Values({k: clip(str(v), most(k)) for k, v in ctx.data.items()})
            for name in tpl.data_providers:
                provider = self.registry.data_providers.get(name)
                if provider is not None:
                    provided = await provider(ctx)
                    values.update({k: clip(str(v), most(k)) for k, v in provided.items()})
            text = _FORMAT.vformat(text, (), values)
        pre = callback_data.prefix(self.version, counter)
        keyboard: list[list[InlineKeyboardButton]] = []
        if ctx is not None and tpl.options is not None:
            opt = f"{pre}{callback_data.OPTION_ID}:"
            found = await self.options(ctx, tpl.options)
            cols = tpl.options.columns
            for i in range(0, len(found), cols):
                keyboard.append(
                    [
                        InlineKeyboardButton(
                            text=self.label(o, locale), callback_data=opt + o.value
                        )
                        for o in found[i : i + cols]
                    ]
                )
            if not found and tpl.options.empty_text:
                text = f"{text}\n\n{self.local(tpl.options.empty_text, locale)}"
        for row in tpl.rows:
            keyboard.append([b.model_copy(update={"callback_data": pre + bid}) for b, bid in row])
        screen = Screen(text, InlineKeyboardMarkup(inline_keyboard=keyboard) if keyboard else None)
        if static:
            self._static[state, locale, counter] = screen
            if len(self._static) > STATIC_CACHE_SIZE:
                self._static.popitem(last=False)
        return screen
