"""The price file's JSON Schema (`KIE_PRICING_RUB.schema.json`) and readable errors from it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).with_name("KIE_PRICING_RUB.schema.json")


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@cache
def validator() -> Draft202012Validator:
    # The schema itself is checked against the metaschema by the tests, not at every
    # start of the service (80 ms of a start-up that the issue wants in seconds).
    return Draft202012Validator(schema())


def schema_problems(raw: Any) -> list[str]:
    """Every schema violation as `model ID: where: what` (or `where: what` outside models)."""
    errors = sorted(validator().iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    return [_describe(raw, error) for error in errors]


def _describe(raw: Any, error: ValidationError) -> str:
    path = list(error.absolute_path)
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = error.message
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator in ("pattern", "const") and description:
        message = f"{error.instance!r} {description}"
    # Name the model by its id where the file gives one, so editors find it.
    if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
        model = _model_id(raw, path[1])
        rest = where.split("]", 1)[1].lstrip(".") if "]" in where else ""
        return f"model {model}: {rest or '(model)'}: {message}"
    return f"{where or '(top level)'}: {message}"


def _model_id(raw: Any, index: int) -> str:
    try:
        model_id = raw["models"][index]["id"]
    except (KeyError, IndexError, TypeError):
        model_id = None
    return model_id if isinstance(model_id, str) and model_id else f"#{index + 1}"
