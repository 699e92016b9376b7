"""How work that ends after its update reaches the user: a screen pushed, a text read.

The product's services (a generation that finishes, a payment that lands) show
screens, and the engine that shows them holds the product's actions, which
call those services. So the services cannot be handed the engine: they are
handed an Outbox, made first and knowing nothing, and the engine is built
with the same Outbox and serves it from its constructor. The whole object
graph is then built once, top-down (`trt.product.build_product`), and nothing
is attached to anything afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiogram import Bot


class Notifier(Protocol):
    """What a product service needs of the engine."""

    def text(self, key: str, locale: str) -> str:
        """A text of the flow's `texts:` in `locale`; LookupError if the flow has none."""
        ...

    async def push(
        self, bot: Bot, chat_id: int, user_id: int, state: str, data: dict[str, Any] | None = None
    ) -> None:
        """Moves the conversation to `state` (declared `pushed:`) and sends its screen."""
        ...


class Outbox:
    """A Notifier whose engine comes later: `FlowEngine(..., outbox=)` serves it."""

    def __init__(self) -> None:
        self._engine: Notifier | None = None

    def serve(self, engine: Notifier) -> None:
        if self._engine is not None and self._engine is not engine:
            raise RuntimeError("an Outbox is served by one engine")
        self._engine = engine

    def _served(self) -> Notifier:
        if self._engine is None:
            raise RuntimeError("no engine serves this Outbox yet: build the FlowEngine with it")
        return self._engine

    def text(self, key: str, locale: str) -> str:
        return self._served().text(key, locale)

    async def push(
        self, bot: Bot, chat_id: int, user_id: int, state: str, data: dict[str, Any] | None = None
    ) -> None:
        await self._served().push(bot, chat_id, user_id, state, data)
