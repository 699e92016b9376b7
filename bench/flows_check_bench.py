"""How fast an editor's loop is: `trt flows check`, `trt --help`, and the check of a
generated 1,000-state flow, against baselines measured in the same run.

Run with ``.venv/bin/python -m bench.flows_check_bench`` (or ``make bench``).

Goals (issue 12): `trt flows check` of the real flows.yaml and `trt --help` under 0.5 s
wall, the check of a 1,000-state flow under 1 s. Wall times are of fresh `trt`
processes, as an editor runs them (interpreter start and imports included); the
baseline is a bare `python -c pass` on this machine, so the ratio says what the command
adds to starting Python at all. In-process, the check is compared with reading the
same YAML with PyYAML's fastest parser (`yaml.compose`, the least any check must do).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The parser the loader uses: LibYAML's when PyYAML was built with it.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SYSTEM = {
    "back": {"ru": "« Назад", "en": "« Back"},
    "main_menu": {"ru": "≡ Главное меню", "en": "≡ Main menu"},
    "stale": {"ru": "Меню устарело", "en": "This menu is out of date"},
    "error": {"ru": "Ошибка (код {error_id})", "en": "Error (code {error_id})"},
    "unexpected_input": {"ru": "Нажмите кнопку", "en": "Tap a button"},
    "coming_soon": {"ru": "Скоро", "en": "Soon"},
    "busy": {"ru": "Подождите", "en": "Wait"},
}


def generated_flow(states: int) -> dict[str, Any]:
    """A menu tree of about `states` screens: ten sections of ten pages of leaves, each
    with HTML text, Back to its parent, and a text input on every tenth leaf."""
    flow: dict[str, Any] = {
        "locales": ["ru", "en"],
        "fallback_locale": "en",
        "root": "main",
        "system": SYSTEM,
        "states": {},
    }
    made = ["main"]
    children: dict[str, list[str]] = {"main": []}
    queue = ["main"]
    while len(made) < states and queue:
        parent = queue.pop(0)
        for _ in range(10):
            if len(made) >= states:
                break
            name = f"s{len(made)}"
            made.append(name)
            children[parent].append(name)
            children[name] = []
            queue.append(name)
    for name in made:
        state: dict[str, Any] = {
            "text": {
                "ru": f"<b>Экран {name}</b>\nВыберите, что дальше: <i>{name}</i>.",
                "en": f"<b>Screen {name}</b>\nChoose what next: <i>{name}</i>.",
            },
            "buttons": [
                [{"id": child, "text": {"ru": child, "en": child}, "to": child}]
                for child in children[name]
            ],
        }
        if name != "main":
            state["parent"] = next(p for p, kids in children.items() if name in kids)
        if name != "main" and not children[name] and int(name[1:]) % 10 == 0:
            state["input"] = {
                "accept": ["text"],
                "store": f"w_{name}",
                "next": name,
                "max_length": 100,
                "example": "hello",
                "error": {"ru": "Нет", "en": "No"},
            }
        flow["states"][name] = state
    return flow


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def wall(argv: list[str], runs: int) -> float:
    """Median wall time of a fresh process."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--states", type=int, default=1000)
    args = parser.parse_args()

    from engine.checker import check_flow
    from engine.loader import parse_flow
    from flows.registry import build_registry

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "flows_1000.yaml"
        big.write_text(
            yaml.safe_dump(generated_flow(args.states), allow_unicode=True), encoding="utf-8"
        )
        source = big.read_text(encoding="utf-8")
        real = (ROOT / "flows.yaml").read_text(encoding="utf-8")
        registry = build_registry()
        assert check_flow(parse_flow(source)).ok, "the generated flow must pass the check"

        trt = [sys.executable, "-m", "trt.cli"]
        bare = wall([sys.executable, "-c", "pass"], args.runs)
        rows = [
            ("python -c pass (baseline)", bare, None),
            ("trt --help", wall([*trt, "--help"], args.runs), 0.5),
            ("trt flows check (flows.yaml)", wall([*trt, "flows", "check"], args.runs), 0.5),
            (
                f"trt flows check ({args.states} states)",
                wall([*trt, "flows", "check", str(big)], args.runs),
                1.0,
            ),
        ]
        print(f"{'wall, fresh process':42} {'seconds':>8} {'× python':>9}  goal")
        for name, seconds, goal in rows:
            verdict = "" if goal is None else ("ok" if seconds < goal else f"OVER {goal} s")
            print(f"{name:42} {seconds:8.3f} {seconds / bare:9.1f}  {verdict}")

        print(f"\n{'in process':42} {'ms':>8} {'× yaml':>9}")
        for name, text, reg in (
            ("flows.yaml", real, registry),
            (f"{args.states} states", source, None),
        ):
            floor = best_of(args.runs, lambda t=text: yaml.compose(t, Loader=LOADER))
            checked = best_of(args.runs, lambda t=text, r=reg: check_flow(parse_flow(t), r))
            print(f"{'yaml.compose ' + name:42} {floor * 1000:8.1f} {1.0:9.1f}")
            print(f"{'parse + check ' + name:42} {checked * 1000:8.1f} {checked / floor:9.1f}")


if __name__ == "__main__":
    main()
