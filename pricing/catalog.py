"""The model catalog as the menus and the generation need it: kinds, inputs, parameters, prices.

`load_catalog(path)` reads `KIE_PRICING_RUB.json`, checks it against its JSON
Schema and the cross-field rules below, and builds a `Catalog`; a file that
fails either check raises `CatalogError` with every problem found.

Cross-field rules (beyond the schema): unique model ids; unique parameter names
and KIE fields per model; a default among the choices; choices readable as the
parameter's type; labels only for existing choices; `pricing.by`, `weights` and
`strict` naming parameters; `duration_param` a numeric parameter of positive
choices; each variant naming exactly the `by` parameters with existing choices;
no two variants for one combination; no price of 0 for a model that is not
free (a zero price would sell a generation for nothing).

A model whose price table cannot price every combination of its choices (no
variants at all, or a `strict` parameter with a value no variant has) loads,
but is hidden: `Catalog.get` and `Catalog.by_kind` skip it, and
`trt pricing check` reports it. Prices themselves are computed by
`pricing.calculator`; money rules are in `pricing.money`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pricing.calculator import DEFAULT_WEIGHT, Dimension, NoPrice, PriceTable, Quote, Variant
from pricing.money import format_rub, rub_to_kopecks

__all__ = [
    "DEFAULT_PATH",
    "MENU_KINDS",
    "Catalog",
    "CatalogError",
    "Model",
    "NoPrice",
    "Param",
    "Quote",
    "format_rub",
    "load_catalog",
    "parse_catalog",
    "rub_to_kopecks",
]

DEFAULT_PATH = Path(__file__).with_name("KIE_PRICING_RUB.json")

ParamType = Literal["string", "int", "float", "bool"]
# The kinds of work a model does (the schema's `kinds` enum).
CATALOG_KINDS = (
    "text_to_image",
    "image_to_image",
    "edit",
    "text_to_video",
    "image_to_video",
    "audio",
)
# flows.yaml's menu kinds that differ from the catalog's; "free" lists free models of any kind.
MENU_KINDS = {"image_edit": "edit"}
FREE_KIND = "free"
# Every kind a menu may name: "free" and each catalog kind under its menu name.
MENU_KIND_NAMES = (
    FREE_KIND,
    *({catalog: menu for menu, catalog in MENU_KINDS.items()}.get(k, k) for k in CATALOG_KINDS),
)
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_INT = re.compile(r"^-?[0-9]+$")


class CatalogError(ValueError):
    """The price file cannot be used; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    title: dict[str, str]
    choices: tuple[str, ...]
    default: str
    kie_field: str = ""
    type: ParamType = "string"
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def numeric(self) -> bool:
        """Every choice is a number: the fallback measures distances between them."""
        return all(_NUMBER.match(c) for c in self.choices)

    def label(self, choice: str) -> str | dict[str, str]:
        return self.labels.get(choice) or choice

    def kie_value(self, choice: str) -> str | int | float | bool:
        """The value as KIE expects it in the request's `input`."""
        if self.type == "int":
            return int(choice)
        if self.type == "float":
            return float(choice)
        if self.type == "bool":
            return choice == "true"
        return choice


@dataclass(frozen=True, slots=True)
class PromptSpec:
    field: str = "prompt"
    min_length: int = 1
    max_length: int = 2000

    def accepts(self, text: str) -> bool:
        return self.min_length <= len(text) <= self.max_length


@dataclass(frozen=True, slots=True)
class ImageSpec:
    field: str
    as_list: bool
    min: int
    max: int
    mime_types: tuple[str, ...]
    max_size_mb: float


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    kie_model: str
    kinds: tuple[str, ...]
    free: bool
    title: dict[str, str]
    description: dict[str, str]
    params: tuple[Param, ...]
    table: PriceTable
    family: str = "market"
    prompt: PromptSpec = field(default_factory=PromptSpec)
    images: ImageSpec | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    # Combinations the price table cannot price; a model with any is hidden from menus.
    unpriced: tuple[str, ...] = ()

    @property
    def needs_image(self) -> bool:
        return self.images is not None and self.images.min > 0

    @property
    def sellable(self) -> bool:
        return not self.unpriced

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def chosen(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every parameter's value: the user's choice where valid, else the default."""
        out = {}
        for p in self.params:
            value = values.get(p.name)
            out[p.name] = value if isinstance(value, str) and value in p.choices else p.default
        return out

    def quote(self, values: Mapping[str, Any]) -> Quote:
        """The list price of the combination (what it costs even when the model is free)."""
        return self.table.quote(self.chosen(values))

    def price_kopecks(self, values: Mapping[str, Any]) -> int:
        """What the user pays: 0 for a free model, else the quote. Raises NoPrice."""
        quote = self.quote(values)
        return 0 if self.free else quote.kopecks

    def min_price_kopecks(self) -> int:
        """The lowest price over every combination ("from ... ₽"). Raises NoPrice."""
        return min(self.price_kopecks(c) for c in self.combinations())

    def combinations(self, names: Sequence[str] | None = None) -> Iterator[dict[str, str]]:
        """Every combination of the choices of `names` (default: the parameters the price
        depends on, plus the duration of a per-second price), others at their defaults."""
        if names is None:
            names = [d.name for d in self.table.dimensions]
            if self.table.duration_param and self.table.duration_param not in names:
                names.append(self.table.duration_param)
        params = [p for p in self.params if p.name in names]
        for values in itertools.product(*(p.choices for p in params)):
            yield self.chosen(dict(zip((p.name for p in params), values, strict=True)))

    def kind_for(self, menu_kind: str | None) -> str:
        """The catalog kind a menu kind means for this model (its first kind for "free")."""
        kind = MENU_KINDS.get(menu_kind or "", menu_kind or "")
        return kind if kind in self.kinds else self.kinds[0]

    def kie_input(
        self, values: Mapping[str, Any], prompt: str, image_urls: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The `input` of KIE's createTask: fixed values, the prompt, parameters, images."""
        out: dict[str, Any] = dict(self.fixed)
        out[self.prompt.field] = prompt
        chosen = self.chosen(values)
        for p in self.params:
            out[p.kie_field or p.name] = p.kie_value(chosen[p.name])
        if self.images is not None and image_urls:
            urls = list(image_urls)[: self.images.max]
            out[self.images.field] = urls if self.images.as_list else urls[0]
        return out


class Catalog:
    def __init__(self, models: Sequence[Model]) -> None:
        self.models = {m.id: m for m in models}

    def get(self, model_id: str | None) -> Model | None:
        """A model that can be sold; None for unknown and hidden (unpriced) ones."""
        model = self.models.get(model_id) if model_id else None
        return model if model is not None and model.sellable else None

    def by_kind(self, kind: str) -> list[Model]:
        """The sellable models a menu kind lists, in file order."""
        return [m for m in self.of_kind(kind) if m.sellable]

    def of_kind(self, kind: str) -> list[Model]:
        """Every model of a menu kind, hidden ones included (for checks)."""
        if kind == FREE_KIND:
            return [m for m in self.models.values() if m.free]
        kind = MENU_KINDS.get(kind, kind)
        return [m for m in self.models.values() if kind in m.kinds]

    @property
    def hidden(self) -> list[Model]:
        return [m for m in self.models.values() if not m.sellable]


def load_catalog(path: Path = DEFAULT_PATH) -> Catalog:
    """The catalog in `path`; raises CatalogError listing every problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CatalogError([f"cannot read JSON: {exc}"]) from exc
    catalog, problems = parse_catalog(raw)
    if catalog is None or problems:
        raise CatalogError(problems)
    return catalog


def parse_catalog(raw: Any) -> tuple[Catalog | None, list[str]]:
    """The catalog and every problem of the document; no catalog if the schema fails."""
    from pricing.schema import schema_problems  # jsonschema: only when a file is read

    problems = schema_problems(raw)
    if problems:
        return None, problems
    models = []
    seen: set[str] = set()
    for item in raw["models"]:
        model_problems: list[str] = []
        model = _model(item, model_problems)
        if item["id"] in seen:
            model_problems.append("the id is used by another model")
        seen.add(item["id"])
        problems += [f"model {item['id']}: {p}" for p in model_problems]
        if model is not None:
            models.append(model)
    return Catalog(models), problems


def _model(item: dict[str, Any], problems: list[str]) -> Model | None:
    params = tuple(_param(p, problems) for p in item["params"])
    by_name = {p.name: p for p in params}
    if len(by_name) != len(params):
        problems.append("two parameters have the same name")
    prompt = PromptSpec(**item["input"]["prompt"])
    if prompt.min_length > prompt.max_length:
        problems.append("input.prompt: min_length is above max_length")
    images = _images(item["input"].get("images"), problems)
    fixed = dict(item["input"].get("fixed", {}))
    fields = [prompt.field, *(p.kie_field for p in params), *fixed]
    if images is not None:
        fields.append(images.field)
    for dup in sorted({f for f in fields if fields.count(f) > 1}):
        problems.append(f"KIE field {dup!r} is filled twice (prompt, images, params, fixed)")
    table = _table(item["pricing"], by_name, item["free"], problems)
    if problems:
        return None
    model = Model(
        id=item["id"],
        kie_model=item["kie_model"],
        family=item["family"],
        kinds=tuple(item["kinds"]),
        free=item["free"],
        title=item["title"],
        description=item["description"],
        params=params,
        table=table,
        prompt=prompt,
        images=images,
        fixed=fixed,
    )
    unpriced = []
    for combination in model.combinations([d.name for d in table.dimensions]):
        try:
            table.quote(combination)
        except NoPrice as exc:
            key = ", ".join(f"{d.name}={combination[d.name]}" for d in table.dimensions)
            unpriced.append(f"{key or 'any parameters'}: {exc}")
    return replace(model, unpriced=tuple(unpriced))


def _param(item: dict[str, Any], problems: list[str]) -> Param:
    param = Param(
        name=item["name"],
        title=item["title"],
        choices=tuple(item["choices"]),
        default=item["default"],
        kie_field=item["kie_field"],
        type=item["type"],
        labels=dict(item.get("labels", {})),
    )
    where = f"param {param.name}"
    if param.default not in param.choices:
        problems.append(f"{where}: default {param.default!r} is not among its choices")
    for choice in param.choices:
        if not _readable(choice, param.type):
            problems.append(f"{where}: choice {choice!r} is not a valid {param.type}")
    for label in param.labels:
        if label not in param.choices:
            problems.append(f"{where}: label for {label!r}, which is not a choice")
    return param


def _readable(choice: str, kind: ParamType) -> bool:
    if kind == "int":
        return bool(_INT.match(choice))
    if kind == "float":
        return bool(_NUMBER.match(choice))
    if kind == "bool":
        return choice in ("true", "false")
    return True


def _images(item: dict[str, Any] | None, problems: list[str]) -> ImageSpec | None:
    if item is None:
        return None
    spec = ImageSpec(
        field=item["field"],
        as_list=item["list"],
        min=item["min"],
        max=item["max"],
        mime_types=tuple(item["mime_types"]),
        max_size_mb=float(item["max_size_mb"]),
    )
    if spec.min > spec.max:
        problems.append("input.images: min is above max")
    if not spec.as_list and spec.max != 1:
        problems.append("input.images: a single-URL field takes at most 1 image")
    return spec


def _table(
    item: dict[str, Any], params: dict[str, Param], free: bool, problems: list[str]
) -> PriceTable:
    by = list(item["by"])
    weights: dict[str, Any] = item.get("weights", {})
    strict = set(item.get("strict", []))
    for name in [*by, *weights, *strict]:
        if name not in params:
            problems.append(f"pricing: no parameter {name!r}")
    for name in [*weights, *strict]:
        if name not in by:
            problems.append(f"pricing: {name!r} is weighted or strict but not in `by`")
    duration = item.get("duration_param")
    if duration is not None:
        param = params.get(duration)
        if param is None:
            problems.append(f"pricing: no duration parameter {duration!r}")
        elif not param.numeric or any(Decimal(c) <= 0 for c in param.choices):
            problems.append(f"pricing: duration {duration!r} must have positive numeric choices")
    dims = tuple(_dimension(params[n], weights.get(n), n in strict) for n in by if n in params)
    variants = []
    seen: dict[tuple[tuple[str, str], ...], int] = {}
    for number, raw in enumerate(item["variants"], start=1):
        where = f"pricing: variant {number}"
        values: dict[str, str] = raw["params"]
        if set(values) != set(by):
            problems.append(f"{where} names {sorted(values)}, expected exactly `by` {sorted(by)}")
            continue
        for name, value in values.items():
            if name in params and value not in params[name].choices:
                problems.append(f"{where}: {name}={value!r} is not among the choices")
        rub = Decimal(raw["rub"])
        if rub < 0:
            problems.append(f"{where}: negative price {raw['rub']}")
        elif rub == 0 and not free:
            problems.append(f"{where}: price 0 for a model that is not free")
        key = tuple((n, values[n]) for n in by)
        if key in seen:
            problems.append(f"{where} duplicates variant {seen[key]} ({_describe(key)})")
            continue
        seen[key] = number
        usd = Decimal(raw["usd"]) if "usd" in raw else None
        variants.append(Variant(key, rub, usd))
    unit = item["unit"]
    return PriceTable(unit, dims, tuple(variants), duration)


def _dimension(param: Param, weight: float | None, strict: bool) -> Dimension:
    span = None
    if param.numeric and len(param.choices) > 1:
        numbers = [Fraction(c) for c in param.choices]
        span = max(numbers) - min(numbers)
    return Dimension(
        param.name,
        DEFAULT_WEIGHT if weight is None else Fraction(str(weight)),
        span,
        strict,
    )


def _describe(key: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) or "any parameters"
