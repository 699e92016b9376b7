"""`trt pricing check`: is the price file safe to deploy with this flows.yaml?

It fails (a problem) when:
* the file is not JSON, breaks the JSON Schema, or breaks a cross-field rule of
  `pricing.catalog` (defaults among choices, negative, zero or duplicate
  variants, unknown parameters, ...);
* a model cannot price some combination of its parameter choices (it would be
  hidden from menus; a price of 0 is never used instead);
* a variant sells below KIE's cost (`exchange.rub_per_usd` x its `usd`);
* a menu of flows.yaml asks for a kind the catalog does not know, or a model a
  menu reaches cannot take what the flow's prompt or image step accepts.

It reports without failing: every combination priced by the nearest-variant
fallback and the variant it uses, prices off the markup rule, and models no
menu reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.loader import FlowError, load_flow
from engine.spec import FlowSpec, Input
from pricing.calculator import Variant
from pricing.catalog import CATALOG_KINDS, FREE_KIND, MENU_KINDS, Catalog, Model, parse_catalog
from pricing.money import format_rub, to_kopecks

# The conversation keys the generation reads (flows/generation/request.py).
PROMPT_KEY, IMAGE_KEY = "prompt", "image"
# Half a kopeck: the price list rounds USD x rate x markup to the nearest kopeck.
MARKUP_TOLERANCE = Decimal("0.005")


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: int = 0
    combinations: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(path: Path, flows_path: Path) -> Report:
    report = Report()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"cannot read JSON: {exc}")
        return report
    catalog, problems = parse_catalog(raw)
    report.problems += problems
    if catalog is None:
        return report
    report.models = len(catalog.models)
    _check_costs(raw, catalog, report)
    try:
        spec = load_flow(flows_path).spec
    except FlowError as exc:
        report.problems.append(f"{flows_path}: cannot load: {exc}")
        return report
    kinds = menu_kinds(spec)
    reachable: dict[str, Model] = {}
    for kind in kinds:
        if kind != FREE_KIND and MENU_KINDS.get(kind, kind) not in CATALOG_KINDS:
            report.problems.append(f"{flows_path}: menu kind {kind!r} is not a catalog kind")
            continue
        models = catalog.of_kind(kind)
        if not models:
            report.notes.append(f"menu kind {kind!r} lists no models")
        reachable.update((m.id, m) for m in models)
    for model in catalog.models.values():
        for combination in model.unpriced:
            report.problems.append(f"model {model.id}: no price for {combination} (hidden)")
        if model.id in reachable and model.sellable:
            _check_model(model, spec, report)
    unreached = [m for m in catalog.models.values() if m.id not in reachable]
    if unreached:
        names = ", ".join(f"{m.id} ({'/'.join(m.kinds)})" for m in unreached)
        report.notes.append(f"not in any menu of {flows_path.name}: {names}")
    return report


def menu_kinds(spec: FlowSpec) -> list[str]:
    """The kinds the flow's buttons set (`set: {kind: ...}`), in file order."""
    kinds: list[str] = []
    for state in spec.states.values():
        for row in state.buttons:
            for button in row:
                kind = button.set.get("kind")
                if isinstance(kind, str) and kind not in kinds:
                    kinds.append(kind)
    return kinds


def _inputs(spec: FlowSpec, key: str) -> list[tuple[str, Input]]:
    return [(n, s.input) for n, s in spec.states.items() if s.input and s.input.store == key]


def _check_model(model: Model, spec: FlowSpec, report: Report) -> None:
    where = f"model {model.id}"
    for combination in model.combinations():
        report.combinations += 1
        quote = model.quote(combination)
        if not quote.exact:
            asked = ", ".join(f"{d.name}={combination[d.name]}" for d in model.table.dimensions)
            report.fallbacks.append(
                f"{where}: {asked} has no exact price; uses variant {quote.variant.describe()}"
                f" ({_price(model, quote.variant)}, distance {float(quote.distance):g})"
            )
    for name, step in _inputs(spec, PROMPT_KEY):
        p = model.prompt
        if step.min_length < p.min_length or step.max_length > p.max_length:
            report.problems.append(
                f"{where}: step {name!r} accepts {step.min_length}..{step.max_length} characters,"
                f" the model {p.min_length}..{p.max_length}"
            )
    if not model.needs_image or model.images is None:
        return
    images = model.images
    if images.min > 1:
        report.problems.append(f"{where}: needs {images.min} images, the flow gives one")
    for name, step in _inputs(spec, IMAGE_KEY):
        extra = [t for t in step.mime_types if t not in images.mime_types]
        if extra or not step.mime_types:
            report.problems.append(
                f"{where}: step {name!r} accepts {', '.join(extra) or 'any type'},"
                f" the model only {', '.join(images.mime_types)}"
            )
        if step.max_size_mb > images.max_size_mb:
            report.problems.append(
                f"{where}: step {name!r} accepts up to {step.max_size_mb:g} MB,"
                f" the model {images.max_size_mb:g} MB"
            )


def _price(model: Model, variant: Variant) -> str:
    rub = format_rub(to_kopecks(variant.rub))
    return f"{variant.rub} ₽/s" if model.table.unit == "per_second" else f"{rub} ₽"


def _check_costs(raw: dict[str, Any], catalog: Catalog, report: Report) -> None:
    exchange = raw.get("exchange")
    if not exchange:
        return
    rate, markup = Decimal(exchange["rub_per_usd"]), Decimal(exchange["markup"])
    for model in catalog.models.values():
        for variant in model.table.variants:
            if variant.usd is None:
                continue
            cost, listed = variant.usd * rate, variant.usd * rate * markup
            what = f"model {model.id}: variant {variant.describe()}: {variant.rub} ₽"
            if variant.rub < cost and not model.free:
                report.problems.append(f"{what} is below KIE's cost {cost:.2f} ₽")
            elif abs(variant.rub - listed) > MARKUP_TOLERANCE:
                report.notes.append(f"{what} is off the markup rule ({listed:.2f} ₽)")
