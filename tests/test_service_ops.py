"""The operations files agree with the code: every metric the dashboard and the alert rules
use is exported, the rules parse (and pass their promtool unit tests), .env.example lists
every setting, the container and the Render blueprint start `trt migrate` then `trt serve`;
and the input audit: limits on every input, no SQL built from strings.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

import trt.serve  # noqa: F401 - registers every collector, as the running service has them
from engine.loader import load_flow
from tests.conftest import in_ci
from trt.observability.metrics import REGISTRY
from trt.settings import SETTINGS_MODULES, every_module, settings_classes

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERT_TESTS = OPS / "prometheus" / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "dashboard.json"

# ------------------------------------------------------------------ metrics in PromQL

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "le",
}  # fmt: skip


def exported_names() -> set[str]:
    """Every sample name /metrics can show, labelled series not yet created included."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small tokenizer: enough for ours)."""
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)  # Grafana variables
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for found in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = found.group(1), found.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def alert_rules() -> list[dict[str, object]]:
    spec = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in spec["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    spec = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in spec["panels"] for t in p.get("targets", [])]


def test_the_promql_reader_finds_metrics_and_only_metrics() -> None:
    expr = (
        'sum by (le, method) (rate(trt_a_bucket{route="/x", s=~"5.."}[$__rate_interval]))'
        " / clamp_min(sum without (x) (trt_b_total offset 5m), 1e-9) > 0.5 or on(i) process_c"
    )
    assert metric_names(expr) == {"trt_a_bucket", "trt_b_total", "process_c"}


def test_every_metric_on_the_dashboard_and_in_the_alerts_is_exported() -> None:
    exported = exported_names()
    exprs = dashboard_exprs() + [str(rule["expr"]) for rule in alert_rules()]
    assert len(exprs) > 20
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= exported, (expr, used - exported)


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    rules = {str(rule["alert"]): rule for rule in alert_rules()}
    watched = {
        "TrtDatabasePoolExhausted": "trt_db_pool_",
        "TrtHighErrorRate": "trt_updates_total",
        "TrtCallbacksUnanswered": "trt_callbacks_unanswered_total",
        "TrtStuckHolds": "trt_holds_",
        "TrtKieFailureRate": "trt_kie_errors_total",
        "TrtWebhook5xx": "/telegram/webhook",
    }
    for name, needle in watched.items():
        assert needle in str(rules[name]["expr"]), name
    for name, rule in rules.items():
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in ("warning", "critical"), name
        assert isinstance(annotations, dict) and annotations["summary"], name


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if in_ci():
            pytest.fail("promtool is missing; .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus); CI runs this")
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, check=False, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_metrics_registry_renders() -> None:
    assert b"# TYPE trt_updates_total counter" in generate_latest(REGISTRY)


# ------------------------------------------------------------------ settings


_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")


def example_settings() -> dict[str, int]:
    """Each variable in .env.example, with the line it is on."""
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    found: dict[str, int] = {}
    for number, line in enumerate(lines):
        if match := _ASSIGNMENT.match(line):
            assert match.group(1) not in found, f"{match.group(1)} is listed twice"
            found[match.group(1)] = number
            # A description comment above it (or above its group of settings).
            above = number - 1
            while above >= 0 and _ASSIGNMENT.match(lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("# "), f"{match.group(1)}: no comment"
    return found


def every_setting() -> set[str]:
    return {
        field.alias or name
        for cls in settings_classes()
        for name, field in cls.model_fields.items()
    }


def test_settings_modules_name_every_settings_class() -> None:
    """`trt` reads the settings of SETTINGS_MODULES only (fast); importing every module
    of the project must find no class outside them."""
    listed = settings_classes()
    every_module()
    assert settings_classes() == listed
    assert {cls.__module__ for cls in listed} == set(SETTINGS_MODULES)


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    classes = {cls.__name__ for cls in settings_classes()}
    assert {"Settings", "DatabaseSettings", "GenerationSettings"} <= classes
    listed, known = set(example_settings()), every_setting()
    assert known - listed == set(), "settings missing from .env.example"
    assert listed - known == set(), ".env.example lists settings that do not exist"


# ------------------------------------------------------------------ deploy


def test_the_image_has_every_package_and_starts_with_migrate_then_serve(tmp_path: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, re.M))
    copied = {part for line in copied for part in line.split()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, packages - copied
    assert {"alembic", "alembic.ini", "flows.yaml", "ops/start.sh"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), path
    assert 'CMD ["sh", "ops/start.sh"]' in dockerfile and "/healthz" in dockerfile

    # Run the start script with a stand-in `trt` that records what it was asked.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trt").write_text('#!/bin/sh\necho "$* $DATABASE_URL" >> "$LOG"\n')
    (fake / "trt").chmod(0o755)
    for given, expected in [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:///./data/bot.db", "sqlite+aiosqlite:///./data/bot.db"),
    ]:
        log = tmp_path / "calls.log"
        log.unlink(missing_ok=True)
        env = {"PATH": f"{fake}:/usr/bin:/bin", "DATABASE_URL": given, "LOG": str(log)}
        subprocess.run(["sh", str(ROOT / "ops/start.sh")], env=env, check=True, timeout=30)
        assert log.read_text().splitlines() == [f"serve --migrate {expected}"]


def test_the_render_blueprint_runs_the_image_with_its_database() -> None:
    spec = yaml.safe_load((ROOT / "render.yaml").read_text(encoding="utf-8"))
    [web] = [s for s in spec["services"] if s["type"] == "web"]
    databases = {d["name"] for d in spec["databases"]}
    assert web["runtime"] == "docker" and web["dockerCommand"] == "sh ops/start.sh"
    assert web["healthCheckPath"] in ("/healthz", "/readyz")
    env = {e["key"]: e for e in web["envVars"]}
    assert env["DATABASE_URL"]["fromDatabase"]["name"] in databases
    assert env["ENVIRONMENT"]["value"] == "production"
    required = {"BOT_TOKEN", "KIE_API_KEY", "PUBLIC_BASE_URL", "WEBHOOK_SECRET", "WEBHOOK_URL"}
    assert required <= set(env)
    assert set(env) <= every_setting()


# ------------------------------------------------------------------ input audit


def test_every_user_input_has_a_limit() -> None:
    flow = load_flow(ROOT / "flows.yaml")
    inputs = [(name, st.input) for name, st in flow.spec.states.items() if st.input]
    assert inputs
    for name, step in inputs:
        assert step is not None
        if "text" in step.accept:
            assert step.max_length <= 4096, name  # Telegram's own message limit
        if set(step.accept) - {"text"}:
            assert step.max_size_mb <= 20, name  # what the Bot API lets a bot download


_SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript"}
# f-strings that reach SQL, each with why no user input can be in it.
_ALLOWED_SQL_STRINGS = {
    ("storage/db.py", "exec_driver_sql"),  # BEGIN {mode}: the mode is our execution option
    ("storage/db.py", "execute"),  # PRAGMA busy_timeout={constant}
    # SELECT ledger_x(p_name => :name, ...): our function and parameter names, never input.
    ("storage/ledger_functions.py", "text"),
    # CREATE FUNCTION compiled from our programs; DROP and COMMENT name ledger_* functions
    # by the signatures PostgreSQL lists or we generate.
    ("storage/ledger_plpgsql.py", "exec_driver_sql"),
}


def _sqlalchemy_text_imported(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("sqlalchemy")
        and any(alias.name == "text" for alias in node.names)
        for node in ast.walk(tree)
    )


def _built_strings(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    sql_text = _sqlalchemy_text_imported(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "text":
            # ctx.text(...) and the like are product texts; only sqlalchemy's makes SQL.
            owner = func.value if isinstance(func, ast.Attribute) else None
            if owner is None and not sql_text:
                continue
            if owner is not None and not (
                isinstance(owner, ast.Name) and owner.id in ("sa", "sqlalchemy")
            ):
                continue
        first = node.args[0]
        built = (
            isinstance(first, ast.JoinedStr)
            or (isinstance(first, ast.BinOp) and isinstance(first.op, ast.Add | ast.Mod))
            or (
                isinstance(first, ast.Call)
                and isinstance(first.func, ast.Attribute)
                and first.func.attr == "format"
            )
        )
        if name in _SQL_CALLS and built:
            found.append((name, node.lineno))
    return found


def test_no_sql_is_built_from_strings() -> None:
    offenders = []
    for package in ("engine", "flows", "storage", "pricing", "kie", "trt"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for name, line in _built_strings(ast.parse(path.read_text(encoding="utf-8"))):
                if (relative, name) not in _ALLOWED_SQL_STRINGS:
                    offenders.append(f"{relative}:{line}: {name}(<built string>)")
    assert offenders == []
    # And the check sees what it is meant to see.
    source = 'from sqlalchemy import text\nconn.execute(text(f"SELECT {x}"))'
    assert _built_strings(ast.parse(source)) == [("text", 2)]
