"""Top-up packages: what a user pays (Stars, or RUB through a provider) and what they get."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pricing.catalog import rub_to_kopecks

DEFAULT_PATH = Path(__file__).with_name("TOPUP_PACKAGES.json")
STARS = "XTR"
RUB = "RUB"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _StarsPackage(_Strict):
    id: str = Field(pattern=r"^[a-z0-9]{1,16}$")
    stars: int = Field(gt=0)
    credit_rub: str
    title: dict[str, str]


class _RubPackage(_Strict):
    id: str = Field(pattern=r"^[a-z0-9]{1,16}$")
    rub: str
    credit_rub: str
    title: dict[str, str]


class _File(_Strict):
    notes: str = ""
    stars: list[_StarsPackage]
    rub: list[_RubPackage] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    currency: str  # XTR (Stars) or RUB
    amount: int  # Stars, or kopecks for RUB: Telegram's smallest units either way
    credit: int  # kopecks added to the balance
    title: dict[str, str]


def load_packages(path: Path = DEFAULT_PATH, *, with_rub: bool = False) -> list[Package]:
    raw = _File.model_validate(json.loads(path.read_text(encoding="utf-8")))
    packages = [
        Package(p.id, STARS, p.stars, rub_to_kopecks(p.credit_rub), dict(p.title))
        for p in raw.stars
    ]
    if with_rub:
        packages += [
            Package(p.id, RUB, rub_to_kopecks(p.rub), rub_to_kopecks(p.credit_rub), dict(p.title))
            for p in raw.rub
        ]
    ids = [p.id for p in packages]
    if len(ids) != len(set(ids)) or any(p.credit <= 0 for p in packages):
        raise ValueError(f"{path}: package ids must be unique and credits positive")
    return packages
