"""`trt pricing check`: is the price file safe to deploy with this flows.yaml?

The price file's own checks are pricing.check's. Here, where both the
conversation and the catalog are known, it also fails when a menu of
flows.yaml asks for a kind the catalog does not know, or a model a menu
reaches cannot take what the flow's prompt or image step accepts; and it
notes models no menu reaches.
"""

from __future__ import annotations

from pathlib import Path

from engine.loader import FlowError, load_flow
from engine.spec import FlowSpec, Input
from flows.generation.request import IMAGE_KEY, PROMPT_KEY
from pricing.catalog import CATALOG_KINDS, FREE_KIND, MENU_KINDS, Model
from pricing.check import Report, check_prices, count_combinations


def check_file(path: Path, flows_path: Path) -> Report:
    report, catalog = check_prices(path)
    if catalog is None:
        return report
    try:
        spec = load_flow(flows_path).spec
    except FlowError as exc:
        report.problems.append(f"{flows_path}: cannot load: {exc}")
        return report
    reachable: dict[str, Model] = {}
    for kind in menu_kinds(spec):
        if kind != FREE_KIND and MENU_KINDS.get(kind, kind) not in CATALOG_KINDS:
            report.problems.append(f"{flows_path}: menu kind {kind!r} is not a catalog kind")
            continue
        models = catalog.of_kind(kind)
        if not models:
            report.notes.append(f"menu kind {kind!r} lists no models")
        reachable.update((m.id, m) for m in models)
    for model in catalog.models.values():
        if model.id in reachable and model.sellable:
            count_combinations(model, report)
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
    """Can the flow's prompt and image steps feed the model?"""
    where = f"model {model.id}"
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
