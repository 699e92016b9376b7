"""The layers import one way: update -> engine -> action (flows) -> storage; pricing and
kie stand alone; trt wires them. A module that reaches back up fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "flows", "storage", "pricing", "kie", "trt")
# What each package must never import.
FORBIDDEN = {
    "engine": {"flows", "storage", "pricing", "kie", "trt"},
    "pricing": {"engine", "flows", "storage", "kie", "trt"},
    "kie": {"engine", "flows", "storage", "pricing", "trt"},
    # storage implements the engine's StateStore, so it may name engine's types.
    "storage": {"flows", "pricing", "kie", "trt"},
    "flows": {"trt"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Each module of `package` and the top-level project packages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
        found[str(path.relative_to(ROOT))] = names & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_never_imports_what_sits_above_it(package: str) -> None:
    modules = imported_packages(package)
    assert modules, f"no modules found in {package}/"
    wrong = {m: sorted(names & FORBIDDEN[package]) for m, names in modules.items()}
    assert {m: names for m, names in wrong.items() if names} == {}
