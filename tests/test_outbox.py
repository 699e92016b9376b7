"""The Outbox the product's services are built with, before the engine that serves it."""

from __future__ import annotations

from typing import Any

import pytest

from engine.outbox import Outbox


class Engine:
    def __init__(self) -> None:
        self.pushed: list[tuple[int, int, str, dict[str, Any] | None]] = []

    def text(self, key: str, locale: str) -> str:
        return f"{key}/{locale}"

    async def push(
        self, bot: Any, chat_id: int, user_id: int, state: str, data: dict[str, Any] | None = None
    ) -> None:
        self.pushed.append((chat_id, user_id, state, data))


async def test_an_outbox_no_engine_serves_says_so() -> None:
    outbox = Outbox()
    with pytest.raises(RuntimeError, match="build the FlowEngine with it"):
        outbox.text("receipt", "ru")
    with pytest.raises(RuntimeError, match="build the FlowEngine with it"):
        await outbox.push(None, 1, 1, "balance")  # type: ignore[arg-type]


async def test_the_engine_that_serves_it_shows_what_is_pushed() -> None:
    outbox, engine = Outbox(), Engine()
    outbox.serve(engine)
    outbox.serve(engine)  # the same engine again is no change
    await outbox.push(None, 5, 6, "balance", {"x": 1})  # type: ignore[arg-type]
    assert engine.pushed == [(5, 6, "balance", {"x": 1})]
    assert outbox.text("receipt", "en") == "receipt/en"
    with pytest.raises(RuntimeError, match="served by one engine"):
        outbox.serve(Engine())
