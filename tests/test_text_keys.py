"""Text keys: every key the product's Python names is declared, exists, and a missing one
raises instead of reaching a user as the key itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from engine.loader import parse_flow
from engine.render import MissingText, Renderer
from flows.registry import build_registry
from tests.test_flows_check import SOURCE, problems

ROOT = Path(__file__).resolve().parent.parent
TEXT_KEYS = set(yaml.load(SOURCE, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["texts"])
DECLARED = set(build_registry(eager_prices=False).texts)


def _literals() -> tuple[set[str], set[str]]:
    """The string constants of the product's Python, and the constant prefixes of its
    f-strings (`f"progress_{state}"` gives "progress_")."""
    constants: set[str] = set()
    prefixes: set[str] = set()
    for path in (ROOT / "flows").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    prefixes.add(first.value)
    return constants, prefixes


def test_every_text_key_the_python_names_is_declared() -> None:
    """A key written in flows/ as a string, or made by an f-string from a prefix, is
    declared, so `trt flows check` proves it exists in every locale."""
    constants, prefixes = _literals()
    named = TEXT_KEYS & constants
    made = {key for key in TEXT_KEYS for p in prefixes if p.endswith("_") and key.startswith(p)}
    assert named, "the scan found no text key at all: it is not looking where keys are"
    assert {"progress_running", "mv_referral", "kind_audio", "admin_usage_promo"} <= made
    assert (named | made) - DECLARED == set()


@pytest.mark.parametrize(
    "key",
    [
        "progress_running",
        "mv_referral",
        "kind_audio",
        "admin_usage_promo",
        "refund_spent",
        "pay_slow",
        "ledger_insufficient_funds",
        "job_status_rejected",
        "admin_bad_days",
        "job_timeout",
    ],
)
def test_a_key_made_from_a_value_is_checked_like_any_other(key: str) -> None:
    lines = SOURCE.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
    end = at + 1
    while end < len(lines) and lines[end].startswith("    "):  # its ru:/en: lines
        end += 1
    gone = "".join(lines[:at] + lines[end:])
    assert any(f"the product shows text {key!r}, missing here" in p for p in problems(gone))


def test_a_key_the_flow_lacks_raises_instead_of_showing_the_key() -> None:
    flow = parse_flow(SOURCE, "flows.yaml")
    renderer = Renderer(flow, build_registry(eager_prices=False))
    assert renderer.product_text("progress_running", "en").startswith("⏳")
    with pytest.raises(MissingText, match="progress_submitting"):
        renderer.product_text("progress_submitting", "ru")
