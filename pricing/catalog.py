"""The model catalog as the menus need it: kinds, titles, parameters, prices.

A first cut for the menus of the flow engine issue: exact-match prices only.
The pricing issue adds the JSON Schema, the nearest-variant fallback,
`trt pricing check` and reloading on change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).with_name("KIE_PRICING_RUB.json")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    title: dict[str, str]
    choices: tuple[str, ...]
    default: str


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    kie_model: str
    kinds: tuple[str, ...]
    free: bool
    needs_image: bool
    title: dict[str, str]
    description: dict[str, str]
    params: tuple[Param, ...]
    prices: tuple[tuple[dict[str, str], int], ...]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def chosen(self, values: dict[str, str]) -> dict[str, str]:
        """Every parameter's value: the user's choice where valid, else the default."""
        out = {}
        for p in self.params:
            value = values.get(p.name)
            out[p.name] = value if value in p.choices else p.default
        return out

    def price_kopecks(self, values: dict[str, str]) -> int | None:
        """The exact price of a combination, or None when it has none."""
        chosen = self.chosen(values)
        for params, kopecks in self.prices:
            if all(chosen.get(k) == v for k, v in params.items()):
                return kopecks
        return None

    def min_price_kopecks(self) -> int:
        return min(k for _, k in self.prices)


def rub_to_kopecks(rub: str) -> int:
    """Prices are written in rubles; fractions of a kopeck round up, never undercharging."""
    return int((Decimal(rub) * 100).to_integral_value(rounding=ROUND_CEILING))


def format_rub(kopecks: int) -> str:
    rub, kop = divmod(kopecks, 100)
    return f"{rub}" if kop == 0 else f"{rub}.{kop:02d}"


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self.models = {m.id: m for m in models}

    def get(self, model_id: str | None) -> Model | None:
        return self.models.get(model_id) if model_id else None

    def by_kind(self, kind: str) -> list[Model]:
        if kind == "free":
            return [m for m in self.models.values() if m.free]
        return [m for m in self.models.values() if kind in m.kinds]


def load_catalog(path: Path = DEFAULT_PATH) -> Catalog:
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    models = [
        Model(
            id=m["id"],
            kie_model=m["kie_model"],
            kinds=tuple(m["kinds"]),
            free=bool(m["free"]),
            needs_image=bool(m["needs_image"]),
            title=m["title"],
            description=m["description"],
            params=tuple(
                Param(p["name"], p["title"], tuple(p["choices"]), p["default"]) for p in m["params"]
            ),
            prices=tuple((v["params"], rub_to_kopecks(v["rub"])) for v in m["prices"]),
        )
        for m in raw["models"]
    ]
    return Catalog(models)
