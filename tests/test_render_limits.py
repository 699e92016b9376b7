"""What the checker proves about a screen's length holds when it is rendered: a value
longer than its declared length is cut to it, `{name:.N}` shows at most N characters
and never cuts inside an escaped `&amp;`, and every value is escaped, so no value can
break a text's markup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from engine.checker import check_flow
from engine.loader import parse_flow
from engine.registry import Context, Registry
from engine.render import Renderer
from engine.telegram_html import MESSAGE_LIMIT, problems, visible_length

SYSTEM = {
    name: {"ru": "x", "en": "x"}
    for name in ("back", "main_menu", "stale", "error", "unexpected_input", "coming_soon", "busy")
}
FLOW: dict[str, Any] = {
    "locales": ["ru", "en"],
    "fallback_locale": "en",
    "root": "main",
    "system": SYSTEM,
    "providers": {"info": {"provides": {"title": 10, "story": 1000}}},
    "states": {
        "main": {
            "text": {"ru": "<b>{title}</b>\n{story}\n<i>{word:.5}</i>", "en": "{title} {story}"},
            "data": ["info"],
            "buttons": [[{"id": "ask", "text": {"ru": "Слово", "en": "Word"}, "to": "ask"}]],
        },
        "ask": {
            "text": {"ru": "Слово?", "en": "Word?"},
            "parent": "main",
            "input": {
                "accept": ["text"],
                "store": "word",
                "next": "main",
                "max_length": 3000,
                "example": "hello",
                "error": {"ru": "Нет", "en": "No"},
            },
        },
    },
}


def renderer(values: Mapping[str, object]) -> tuple[Renderer, Registry]:
    registry = Registry()

    @registry.data("info")
    async def info(ctx: Context) -> Mapping[str, object]:
        return values

    flow = parse_flow(yaml.safe_dump(FLOW, allow_unicode=True))
    assert check_flow(flow, registry).problems == []
    return Renderer(flow, registry), registry


def context(data: dict[str, Any]) -> Context:
    return Context(bot=None, user_id=1, chat_id=1, locale="ru", state="main", data=data)  # type: ignore[arg-type]


async def test_values_are_cut_to_their_declared_length_and_escaped() -> None:
    hostile = "<b>&" * 1000  # far beyond both declared lengths, and markup
    screen_of, _ = renderer({"title": "T" * 50, "story": hostile})
    screen = await screen_of.render("main", 1, "ru", lambda: context({"word": "a&b&c&d"}))
    assert problems(screen.text) == []
    assert screen.text.startswith("<b>" + "T" * 9 + "…</b>\n")
    story = screen.text.split("\n")[1]
    assert visible_length(story) == 1000 and story.endswith("…")
    # {word:.5}: five characters of the value, cut before escaping.
    assert screen.text.endswith("<i>a&amp;b&amp;c</i>")
    assert visible_length(screen.text) <= MESSAGE_LIMIT


async def test_a_short_value_is_shown_whole() -> None:
    screen_of, _ = renderer({"title": "Flux", "story": "ok"})
    screen = await screen_of.render("main", 1, "ru", lambda: context({"word": "hi"}))
    assert screen.text == "<b>Flux</b>\nok\n<i>hi</i>"


def test_without_the_cap_the_input_could_overflow_the_screen() -> None:
    """The typed word can be 3,000 characters: shown whole, the checker refuses the
    screen; the `:.5` above is what makes it provable."""
    whole = {**FLOW, "states": {**FLOW["states"]}}
    whole["states"]["main"] = {
        **FLOW["states"]["main"],
        "text": {"ru": "{title} {story} {word}", "en": "{title}"},
    }
    flow = parse_flow(yaml.safe_dump(whole, allow_unicode=True))
    found = [p.message for p in check_flow(flow).problems]
    assert len(found) == 1 and "can reach 8" in found[0] and "at most 4096" in found[0]
