"""Telegram's HTML, read the way the Bot API reads a text sent with parse_mode HTML.

Why our own reader: Telegram accepts a small dialect (a dozen tags, four named
entities) and refuses the whole message over one stray `<` or an unclosed `<b>`
("can't parse entities"); a general HTML parser forgives exactly what Telegram does
not. The checker runs every text of every locale through `problems`, so that "ok"
means Telegram will take it, and `visible_length` measures a text as Telegram counts
it against its limits (after the markup is parsed, in UTF-16 code units).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

MESSAGE_LIMIT = 4096  # a message's text, after entities parsing
CAPTION_LIMIT = 1024  # a photo's, video's or audio's caption
ANSWER_LIMIT = 200  # a callback query's notice

# Telegram's tags, and which attributes each may (or must) carry.
_TAGS: dict[str, frozenset[str]] = {
    "b": frozenset(),
    "strong": frozenset(),
    "i": frozenset(),
    "em": frozenset(),
    "u": frozenset(),
    "ins": frozenset(),
    "s": frozenset(),
    "strike": frozenset(),
    "del": frozenset(),
    "tg-spoiler": frozenset(),
    "span": frozenset({"class"}),
    "a": frozenset({"href"}),
    "tg-emoji": frozenset({"emoji-id"}),
    "code": frozenset({"class"}),
    "pre": frozenset(),
    "blockquote": frozenset({"expandable"}),
}
_REQUIRED = {"a": "href", "tg-emoji": "emoji-id", "span": "class"}
_NAMED_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})
_SUPPORTED = "b, i, u, s, a href, code, pre, blockquote, tg-spoiler"

_TAG = re.compile(
    r"<(?P<close>/)?(?P<name>[a-zA-Z][a-zA-Z0-9-]*)"
    r"(?P<attrs>(?:\s+[a-zA-Z][a-zA-Z-]*(?:\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'|[^\s\"'<>=]+))?)*)"
    r"\s*>"
)
_ATTR = re.compile(
    r"(?P<name>[a-zA-Z][a-zA-Z-]*)(?:\s*=\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<bare>\S+)))?"
)
_ENTITY = re.compile(r"&(?:#(?P<dec>[0-9]+)|#[xX](?P<hex>[0-9a-fA-F]+)|(?P<named>[a-zA-Z]+));")
_URL = re.compile(r"^(?:https?://[^\s/?#]+[^\s]*|tg://\S+)$")


@dataclass(frozen=True, slots=True)
class _Open:
    name: str
    at: int


def problems(text: str) -> list[str]:
    """What Telegram would refuse in `text`, in an editor's words; empty when it parses."""
    found: list[str] = []
    stack: list[_Open] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "<":
            tag = _TAG.match(text, pos)
            if tag is None:
                found.append(f"a bare '<' at character {pos + 1}: write &lt;")
                pos += 1
                continue
            found.extend(_tag_problems(tag, stack))
            pos = tag.end()
        elif char == "&":
            entity = _ENTITY.match(text, pos)
            if entity is None:
                found.append(f"a bare '&' at character {pos + 1}: write &amp;")
            elif entity["named"] is not None and entity["named"] not in _NAMED_ENTITIES:
                found.append(
                    f"&{entity['named']}; is not an entity Telegram knows "
                    "(only &lt; &gt; &amp; &quot; and numeric ones)"
                )
            pos = entity.end() if entity is not None else pos + 1
        elif char == ">":
            found.append(f"a bare '>' at character {pos + 1}: write &gt;")
            pos += 1
        else:
            pos += 1
    found.extend(f"<{o.name}> is opened but never closed" for o in reversed(stack))
    return found


def _tag_problems(tag: re.Match[str], stack: list[_Open]) -> list[str]:
    name = tag["name"].lower()
    if name not in _TAGS:
        return [f"<{tag['name']}> is not a tag Telegram supports ({_SUPPORTED})"]
    if tag["close"]:
        if not stack:
            return [f"</{name}> closes nothing"]
        if stack[-1].name != name:
            return [f"</{name}> closes <{stack[-1].name}>: close the inner tag first"]
        stack.pop()
        return []
    found: list[str] = []
    if (
        stack
        and stack[-1].name in ("code", "pre")
        and not (stack[-1].name == "pre" and name == "code")
    ):
        found.append(f"<{name}> inside <{stack[-1].name}>: Telegram allows no tags there")
    attrs = {
        a["name"].lower(): a["dq"] if a["dq"] is not None else a["sq"] or a["bare"] or ""
        for a in _ATTR.finditer(tag["attrs"])
    }
    for attr in attrs:
        if attr not in _TAGS[name]:
            found.append(f"<{name}> takes no attribute {attr!r}")
    required = _REQUIRED.get(name)
    if required is not None and required not in attrs:
        found.append(f'<{name}> needs {required}="…"')
    if name == "a" and "href" in attrs and not _URL.match(html.unescape(attrs["href"])):
        found.append(f'<a href="{attrs["href"]}">: not a link (http://, https:// or tg://)')
    if name == "span" and attrs.get("class", "tg-spoiler") != "tg-spoiler":
        found.append('<span> is only for class="tg-spoiler"')
    stack.append(_Open(name, tag.start()))
    return found


def visible(text: str) -> str:
    """The text a user sees: the markup parsed away, entities decoded."""
    return html.unescape(_TAG.sub("", text))


def visible_length(text: str) -> int:
    """Telegram's measure for its limits: UTF-16 code units of the visible text."""
    return len(visible(text).encode("utf-16-le")) // 2
