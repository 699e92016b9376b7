"""The confirm button: start a generation, or say why it cannot start."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.registry import Context, Outcome, Registry
from flows.generation.request import build_request

if TYPE_CHECKING:
    from flows.services import Services
    from pricing.catalog import Catalog


def register_generate(
    registry: Registry,
    services: Callable[[], Services],
    catalog: Callable[[], Catalog],
    image_url: Callable[[str], str],
) -> None:
    @registry.action("generate")
    async def generate(ctx: Context) -> Outcome:
        request = build_request(catalog(), ctx, image_url)
        started = await services().generation.start(
            key=ctx.run_key,
            user_id=ctx.user_id,
            chat_id=ctx.chat_id,
            locale=ctx.locale,
            request=request,
        )
        if started.outcome == "insufficient_funds":
            return Outcome(to="insufficient_funds")
        if started.outcome == "free_limit":
            return Outcome(to="confirm", notice="free_limit", notice_alert=True)
        return Outcome(to="job_started")
