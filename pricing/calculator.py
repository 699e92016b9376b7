"""The price of one parameter combination: exact variant first, else the nearest one.

A model's price table lists variants; each variant fixes the values of the
parameters its price depends on (`pricing.by` in the file) and gives a price
in rubles, per item or per second. Parameters outside `by` do not change the
price.

Exact match: the variant whose values equal the chosen values of every `by`
parameter.

Nearest-variant fallback, when no variant matches exactly (deterministic):

1. Distance from the chosen combination to a variant is the sum, over the `by`
   parameters where the two differ, of `weight x difference`:
   * the weight is `pricing.weights[param]` in the file, or 1 by default;
   * a categorical parameter differs by 1;
   * a numeric parameter (every choice is a number, e.g. a duration "5", "10",
     "15") differs by `|a - b| / (max - min)` of its choices, so between 0 and 1:
     5 s is nearer to 10 s than to 15 s.
   Arithmetic is exact (fractions), so equal distances are really equal.
2. A parameter listed in `pricing.strict` never falls back: only variants with
   the chosen value are candidates. No candidate at all means no price.
3. Among the variants at the smallest distance the one with the higher price
   for this combination wins (we never undercharge); among equal prices, the
   one written first in the file.

No variants, or no candidate left by `strict`, is `NoPrice`: the combination
cannot be sold, and the catalog hides a model with such a combination.
Money follows `pricing.money`: kopecks, per-second prices multiplied by the
duration before rounding up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from pricing.money import to_kopecks

Unit = Literal["per_item", "per_second"]
DEFAULT_WEIGHT = Fraction(1)


class NoPrice(LookupError):
    """This combination has no price: it must not be sold (and never at 0)."""


@dataclass(frozen=True, slots=True)
class Dimension:
    """A parameter the price depends on, as the distance sees it."""

    name: str
    weight: Fraction = DEFAULT_WEIGHT
    # Numeric parameters: the span (max - min) of their choices; None for categorical.
    span: Fraction | None = None
    strict: bool = False

    def difference(self, a: str, b: str) -> Fraction:
        if a == b:
            return Fraction(0)
        if self.span:
            return abs(Fraction(a) - Fraction(b)) / self.span
        return Fraction(1)


@dataclass(frozen=True, slots=True)
class Variant:
    """One priced combination: `rub` per item, or per second for `per_second` tables."""

    params: tuple[tuple[str, str], ...]
    rub: Decimal
    usd: Decimal | None = None

    @property
    def values(self) -> dict[str, str]:
        return dict(self.params)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params) or "any parameters"


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of a combination, and how it was found."""

    kopecks: int
    variant: Variant
    exact: bool
    distance: Fraction


@dataclass(frozen=True, slots=True)
class PriceTable:
    unit: Unit
    dimensions: tuple[Dimension, ...]
    variants: tuple[Variant, ...]
    # For `per_second`: the parameter holding the duration in seconds.
    duration_param: str | None = None

    def kopecks(self, variant: Variant, chosen: Mapping[str, str]) -> int:
        """The variant's price applied to the chosen combination (its duration, if per second)."""
        if self.unit == "per_second":
            assert self.duration_param is not None
            return to_kopecks(variant.rub, Decimal(chosen[self.duration_param]))
        return to_kopecks(variant.rub)

    def distance(self, chosen: Mapping[str, str], variant: Variant) -> Fraction | None:
        """Weighted distance, or None when a strict parameter differs."""
        values = variant.values
        total = Fraction(0)
        for dim in self.dimensions:
            a, b = chosen[dim.name], values[dim.name]
            if a != b and dim.strict:
                return None
            total += dim.weight * dim.difference(a, b)
        return total

    def quote(self, chosen: Mapping[str, str]) -> Quote:
        """The price for `chosen` (every parameter's value); raises NoPrice."""
        if not self.variants:
            raise NoPrice("no price variants")
        key = tuple((d.name, chosen[d.name]) for d in self.dimensions)
        for variant in self.variants:
            if variant.params == key:
                return Quote(self.kopecks(variant, chosen), variant, True, Fraction(0))
        best: tuple[Fraction, int, Variant] | None = None
        for variant in self.variants:
            distance = self.distance(chosen, variant)
            if distance is None:
                continue
            kopecks = self.kopecks(variant, chosen)
            # Smaller distance wins; at equal distance the higher price; then file order.
            if best is None or (distance, -kopecks) < (best[0], -best[1]):
                best = (distance, kopecks, variant)
        if best is None:
            fixed = ", ".join(f"{d.name}={chosen[d.name]}" for d in self.dimensions if d.strict)
            raise NoPrice(f"no variant with {fixed}")
        distance, kopecks, variant = best
        return Quote(kopecks, variant, False, distance)
