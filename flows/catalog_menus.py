"""Providers and actions for the catalog screens: kinds, models, parameters.

They read the conversation's data (`kind`, `model`, `params`, `param`,
`choice`) that flows.yaml stores as the user taps, and the catalog from
`pricing`, asked anew on every screen so a changed price file applies at once.
Texts come from flows.yaml through `ctx.text`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.registry import Context, Option, Outcome, Registry
from pricing.catalog import Model, Param
from pricing.money import rub
from pricing.source import CatalogProvider


def _model(catalog: CatalogProvider, ctx: Context) -> Model:
    model = catalog().get(ctx.data.get("model"))
    if model is None:
        raise LookupError(f"no model {ctx.data.get('model')!r} in the catalog")
    return model


def _params(ctx: Context) -> dict[str, str]:
    raw: Any = ctx.data.get("params")
    return dict(raw) if isinstance(raw, dict) else {}


def _local(text: Mapping[str, str] | str, locale: str) -> str:
    if isinstance(text, str):
        return text
    return text.get(locale) or text.get("en") or next(iter(text.values()))


def _price_text(ctx: Context, model: Model) -> str:
    if model.free:
        return ctx.text("price_free")
    return rub(model.price_kopecks(_params(ctx)), ctx.locale)


def _value(ctx: Context, param: Param, choice: str) -> str:
    return _local(param.label(choice), ctx.locale)


def _summary(ctx: Context, model: Model) -> str:
    chosen = model.chosen(_params(ctx))
    if not chosen:
        return ctx.text("no_params")
    return ", ".join(
        f"{_local(p.title, ctx.locale)}: {_value(ctx, p, chosen[p.name])}" for p in model.params
    )


def register_catalog_menus(registry: Registry, catalog: CatalogProvider) -> None:
    @registry.data("kind_info")
    async def kind_info(ctx: Context) -> Mapping[str, object]:
        return {"kind_title": ctx.text(f"kind_{ctx.data.get('kind', 'free')}")}

    @registry.options("models_by_kind")
    async def models_by_kind(ctx: Context) -> Sequence[Option]:
        models = catalog().by_kind(str(ctx.data.get("kind", "")))
        return [Option(m.id, m.title) for m in models]

    @registry.data("model_info")
    async def model_info(ctx: Context) -> Mapping[str, object]:
        model = _model(catalog, ctx)
        return {
            "model_title": _local(model.title, ctx.locale),
            "model_description": _local(model.description, ctx.locale),
            "params_summary": _summary(ctx, model),
            "price": _price_text(ctx, model),
        }

    @registry.options("model_params")
    async def model_params(ctx: Context) -> Sequence[Option]:
        model = _model(catalog, ctx)
        chosen = model.chosen(_params(ctx))
        return [
            Option(p.name, f"{_local(p.title, ctx.locale)}: {_value(ctx, p, chosen[p.name])}")
            for p in model.params
        ]

    @registry.options("param_choices")
    async def param_choices(ctx: Context) -> Sequence[Option]:
        param = _model(catalog, ctx).param(str(ctx.data.get("param")))
        return [] if param is None else [Option(c, param.label(c)) for c in param.choices]

    @registry.action("apply_param")
    async def apply_param(ctx: Context) -> Outcome:
        params = _params(ctx)
        params[str(ctx.data["param"])] = str(ctx.data["choice"])
        ctx.data["params"] = params
        return Outcome(notice="param_saved")

    @registry.action("begin_input")
    async def begin_input(ctx: Context) -> Outcome:
        return Outcome(to="image" if _model(catalog, ctx).needs_image else "prompt")

    @registry.data("order_summary")
    async def order_summary(ctx: Context) -> Mapping[str, object]:
        model = _model(catalog, ctx)
        return {
            "model_title": _local(model.title, ctx.locale),
            "params_summary": _summary(ctx, model),
            "price": _price_text(ctx, model),
        }
