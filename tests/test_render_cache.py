"""The renderer's cache of screens without values stays bounded and keeps what is used.

Each cached screen holds a keyboard of pydantic buttons (some 14 KB in bench/soak.py),
and the key has the conversation's counter in it, so without a bound the cache would
fill with the counters of every conversation.
"""

from __future__ import annotations

from engine import render
from tests.test_render_limits import context, renderer


async def test_static_screens_are_cached_up_to_the_bound_least_recently_used_first() -> None:
    screens, _ = renderer({})
    first = await screens.render("ask", 1, "ru", lambda: context({}))
    assert await screens.render("ask", 1, "ru", lambda: context({})) is first  # cached
    for counter in range(2, render.STATIC_CACHE_SIZE + 1):
        await screens.render("ask", counter, "ru", lambda: context({}))
    assert await screens.render("ask", 1, "ru", lambda: context({})) is first  # used last
    for counter in range(render.STATIC_CACHE_SIZE + 1, render.STATIC_CACHE_SIZE + 3):
        await screens.render("ask", counter, "ru", lambda: context({}))
    assert len(screens._static) == render.STATIC_CACHE_SIZE
    kept = set(screens._static)
    assert ("ask", "ru", 1) in kept  # used last, so kept
    assert ("ask", "ru", 2) not in kept and ("ask", "ru", 3) not in kept  # the oldest
    assert await screens.render("ask", 1, "ru", lambda: context({})) is first
