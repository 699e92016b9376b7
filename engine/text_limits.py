"""How long a value can be when a text shows it, and so how long a screen can get.

Shared by the checker, which proves from the file alone that every screen fits in
Telegram's 4096, and the renderer, which cuts a longer value to the same bound so that
the proof holds at run time. A placeholder's bound comes from what can fill it: an
input's `max_length`, an options list's `max_value_length`, a button's `set` value, a
provider's or a pushed state's declared length (`provides: {balance: 32}`), or the
text's own precision (`{prompt:.300}` shows at most 300 characters of the prompt).

Lengths are counted as Telegram does, in UTF-16 code units of the visible text: a value
of N characters may take 2N (emoji), so a bound in characters counts twice.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from engine.spec import FlowSpec
from engine.telegram_html import visible_length

# What fills a placeholder when a text's markup is checked: values are HTML-escaped when
# shown, so any value is inert in text, and this one is also a valid link in an href.
SAMPLE_VALUE = "https://example.org/x"
_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Field:
    """One `{name}` or `{name:.N}` of a text."""

    name: str
    precision: int | None


class BadPlaceholder(ValueError):
    """A placeholder the engine cannot fill: malformed braces, or a format it does not do."""


def fields(text: str) -> tuple[str, list[Field]]:
    """The text's literal parts joined, and its placeholders. Raises BadPlaceholder."""
    literal: list[str] = []
    found: list[Field] = []
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise BadPlaceholder(f"malformed placeholder braces: {exc}") from None
    for part, name, spec, conversion in parsed:
        literal.append(part)
        if name is None:
            continue
        if conversion or not name.isidentifier():
            raise BadPlaceholder(f"{{{name}}}: write {{name}} or {{name:.N}}")
        precision = None
        if spec:
            if not (spec.startswith(".") and spec[1:].isdigit() and int(spec[1:]) > 0):
                raise BadPlaceholder(
                    f"{{{name}:{spec}}}: the only format is :.N, the most characters shown"
                )
            precision = int(spec[1:])
        found.append(Field(name, precision))
    return "".join(literal), found


def sample(text: str) -> str:
    """The text with every placeholder filled by SAMPLE_VALUE (for the markup check)."""
    _, found = fields(text)
    return text.format_map({f.name: SAMPLE_VALUE for f in found})


def value_limits(spec: FlowSpec) -> dict[str, int | None]:
    """The most characters each data name can hold, over everything that can set it;
    None where some source declares no length."""
    limits: dict[str, int | None] = {}

    def add(name: str, most: int | None) -> None:
        if name in limits and limits[name] is None:
            return
        previous = limits.get(name, 0)
        limits[name] = None if most is None or previous is None else max(previous, most)

    for declared in spec.providers.values():
        for name, most in _lengths(declared.provides).items():
            add(name, most)
    for st in spec.states.values():
        for name, most in _lengths(st.pushed or []).items():
            add(name, most)
        if st.input is not None:
            add(st.input.store, st.input.max_length)
        if st.options is not None:
            add(st.options.store, st.options.max_value_length)
        for row in st.buttons:
            for button in row:
                for name, value in button.set.items():
                    add(name, len(str(value)))
    return limits


def _lengths(declared: list[str] | dict[str, int]) -> dict[str, int | None]:
    if isinstance(declared, dict):
        return dict(declared.items())
    return dict.fromkeys(declared)


@dataclass(frozen=True, slots=True)
class Longest:
    """The most UTF-16 code units a text can show, or the placeholders that keep it
    from being known."""

    units: int
    unbounded: tuple[str, ...] = ()


def longest(text: str, limits: dict[str, int | None]) -> Longest:
    """`text` with every placeholder at its longest (2 code units a character)."""
    literal, found = fields(text)
    units = visible_length(literal)
    unbounded: list[str] = []
    for field in found:
        bound = limits.get(field.name, 0) if field.name in limits else 1  # missing: a dash
        if field.precision is not None:
            bound = field.precision if bound is None else min(bound, field.precision)
        if bound is None:
            unbounded.append(field.name)
            continue
        units += 2 * bound
    return Longest(units, tuple(dict.fromkeys(unbounded)))


def clip(value: str, most: int | None) -> str:
    """A value cut to `most` characters (the last one an ellipsis)."""
    if most is None or len(value) <= most:
        return value
    return value[: most - 1] + "…"
