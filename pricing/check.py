"""The price file on its own: is it safe to deploy? (`trt pricing check` adds the menus.)

It fails (a problem) when:
* the file is not JSON, breaks the JSON Schema, or breaks a cross-field rule of
  `pricing.catalog` (defaults among choices, negative, zero or duplicate
  variants, unknown parameters, ...);
* a model cannot price some combination of its parameter choices (it would be
  hidden from menus; a price of 0 is never used instead);
* a variant sells below KIE's cost (`exchange.rub_per_usd` x its `usd`).

It reports without failing prices off the markup rule; `count_combinations`
reports each combination priced by the nearest-variant fallback. Whether the
menus of flows.yaml can sell each model is `trt.pricing_menus`'s question:
pricing knows nothing of the conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pricing.calculator import Variant
from pricing.catalog import Catalog, Model, parse_catalog
from pricing.money import format_rub, to_kopecks

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


def check_prices(path: Path) -> tuple[Report, Catalog | None]:
    """The report on the file alone, and its catalog when it could be read."""
    report = Report()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"cannot read JSON: {exc}")
        return report, None
    catalog, problems = parse_catalog(raw)
    report.problems += problems
    if catalog is None:
        return report, None
    report.models = len(catalog.models)
    _check_costs(raw, catalog, report)
    for model in catalog.models.values():
        for combination in model.unpriced:
            report.problems.append(f"model {model.id}: no price for {combination} (hidden)")
    return report, catalog


def count_combinations(model: Model, report: Report) -> None:
    """Counts the model's combinations, noting each priced by the fallback."""
    for combination in model.combinations():
        report.combinations += 1
        quote = model.quote(combination)
        if not quote.exact:
            asked = ", ".join(f"{d.name}={combination[d.name]}" for d in model.table.dimensions)
            report.fallbacks.append(
                f"model {model.id}: {asked} has no exact price; uses variant "
                f"{quote.variant.describe()} ({_price(model, quote.variant)}, "
                f"distance {float(quote.distance):g})"
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
