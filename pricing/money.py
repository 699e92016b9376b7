"""Rubles in the price file, kopecks everywhere else.

The rounding rule, the one place it is applied:

* A price in the file is a decimal string of rubles (`"18.86"`, `"0.19"`); it may
  carry up to six decimal places, so a per-second price can be more exact than
  a kopeck.
* A price becomes kopecks once, at the end: per item, `rub x 100`; per second,
  `rub x seconds x 100` — multiplied first, rounded after, so a fraction of a
  kopeck per second is not lost 10 or 15 times.
* Rounding is always up (ceiling) to a whole kopeck: we never undercharge.

Amounts are `int` kopecks (never floats); `Decimal` is used only to read the
file's strings exactly.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal


def to_kopecks(rub: Decimal, quantity: Decimal = Decimal(1)) -> int:
    """`rub x quantity` in kopecks, rounded up to a whole kopeck."""
    return int((rub * quantity * 100).to_integral_value(rounding=ROUND_CEILING))


def rub_to_kopecks(rub: str) -> int:
    """A ruble amount written as a string, in kopecks (rounded up)."""
    return to_kopecks(Decimal(rub))


# Locales that write a decimal comma (15,71 ₽); the others a point (15.71 ₽).
_DECIMAL_COMMA = frozenset({"ru", "uk", "be", "kk", "de", "fr", "es", "it", "pt"})


def rub(kopecks: int, locale: str) -> str:
    """An amount for a screen in `locale`, with the sign: `1886` -> `"18,86 ₽"` (ru)."""
    return f"{format_rub(kopecks, locale)} ₽"


def format_rub(kopecks: int, locale: str = "en") -> str:
    """`1886` -> `"18.86"` (`"18,86"` in Russian), `1100` -> `"11"`: without the sign."""
    sign = "-" if kopecks < 0 else ""
    rub, kop = divmod(abs(kopecks), 100)
    point = "," if locale in _DECIMAL_COMMA else "."
    return f"{sign}{rub}" if kop == 0 else f"{sign}{rub}{point}{kop:02d}"
