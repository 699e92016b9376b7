"""From the confirm screen's data to a priced, self-contained generation request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.registry import Context
    from pricing.catalog import Catalog

# The conversation keys the prompt and image steps of flows.yaml store into.
PROMPT_KEY, IMAGE_KEY = "prompt", "image"
# The conversation data a job keeps, so "again" can show the same order.
ORDER_KEYS = ("kind", "model", "params", PROMPT_KEY, IMAGE_KEY)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the confirm screen showed, priced: everything a job needs to run on its own."""

    model_id: str
    kie_model: str
    kind: str
    title: str
    input: dict[str, Any]
    price: int
    data: dict[str, Any]


def build_request(
    catalog: Catalog, ctx: Context, image_url: Callable[[str], str]
) -> GenerationRequest:
    """Raises LookupError when the model or its price is gone (a deploy changed prices)."""
    model = catalog.get(ctx.data.get("model"))
    if model is None:
        raise LookupError(f"no model {ctx.data.get('model')!r}")
    raw_params = ctx.data.get("params")
    chosen = model.chosen(dict(raw_params) if isinstance(raw_params, dict) else {})
    price = model.price_kopecks(chosen)  # 0 for free models; NoPrice (a LookupError) if none
    prompt = str(ctx.data.get(PROMPT_KEY, ""))
    if not model.prompt.accepts(prompt):
        raise LookupError(f"the prompt's length does not suit {model.id}")
    image = ctx.data.get(IMAGE_KEY)
    urls: list[str] = []
    if model.needs_image:
        if not isinstance(image, dict) or "file_id" not in image:
            raise LookupError("the model needs an image and none was given")
        urls.append(image_url(str(image["file_id"])))
    # KIE's own field names and value types (image_url or image_urls, "text", booleans...).
    kie_input: dict[str, Any] = model.kie_input(chosen, prompt, urls)
    kind = model.kind_for(str(ctx.data.get("kind") or ""))
    title = model.title.get(ctx.locale) or next(iter(model.title.values()))
    data = {k: ctx.data[k] for k in ORDER_KEYS if k in ctx.data}
    return GenerationRequest(
        model_id=model.id,
        kie_model=model.kie_model,
        kind=kind,
        title=title,
        input=kie_input,
        price=price,
        data=data,
    )
