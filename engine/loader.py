"""Reads flows.yaml into a `FlowSpec`, remembering where every value stands.

Editors fix problems by line number, so every error, from YAML syntax to a
wrong cross-reference found later by the checker, carries FILE:LINE:COL.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.spec import KEYS, FlowSpec
from engine.suggest import did_you_mean

Loc = tuple[str | int, ...]
_FAST_LOADER: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class FlowError(Exception):
    """The file cannot be used; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Positions:
    """1-based line and column of every value (and every mapping key) by path."""

    file: str
    values: dict[Loc, tuple[int, int]]
    keys: dict[Loc, tuple[int, int]]

    def at(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        """A problem placed at `loc`, or at its nearest ancestor that has a position."""
        for end in range(len(loc), -1, -1):
            sub = loc[:end]
            table = self.keys if key and end == len(loc) else self.values
            pos = table.get(sub) or self.keys.get(sub)
            if pos is not None:
                return Problem(self.file, pos[0], pos[1], message)
        return Problem(self.file, 1, 1, message)


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    spec: FlowSpec
    positions: Positions
    # Short and stable: it goes into every callback data, so a button from an
    # older version of the file is recognised as stale after a deploy.
    version: str


def load_flow(path: str | Path) -> LoadedFlow:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError([Problem(str(path), 1, 1, f"cannot read file: {exc}")]) from exc
    return parse_flow(source, str(path))


def parse_flow(source: str, file: str = "flows.yaml") -> LoadedFlow:
    try:
        node = _compose(source)
    except yaml.MarkedYAMLError as exc:
        raise FlowError([_syntax_problem(source, file, exc)]) from exc
    except yaml.YAMLError as exc:
        raise FlowError([Problem(file, 1, 1, f"YAML: {exc}")]) from exc
    if node is None:
        raise FlowError([Problem(file, 1, 1, "the file is empty")])

    positions = Positions(file, {}, {})
    problems: list[Problem] = []
    # Builds plain scalars from composed nodes (collections are walked by hand). One per
    # parse: a loader remembers every node it built, so a shared one would grow forever.
    scalars = yaml.SafeLoader("")
    data = _to_python(node, (), positions, problems, scalars)
    if problems:
        raise FlowError(problems)
    if not isinstance(data, dict):
        raise FlowError([positions.at((), "the top level must be a mapping")])
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise FlowError(_validation_problems(exc, positions, data)) from exc
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False).encode()
    version = hashlib.blake2s(canonical, digest_size=3).hexdigest()[:4]
    return LoadedFlow(spec, positions, version)


_KEY_LINE = re.compile(r"^(?P<indent> *)(?:- +)?(?P<key>[A-Za-z_][\w-]*) *:(?: |$)")


def _syntax_problem(source: str, file: str, exc: yaml.MarkedYAMLError) -> Problem:
    """A YAML error where the editor made it, in words: PyYAML reports where it gave up,
    often lines below an unclosed quote, and in its grammar's terms."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line if mark else 0
    lines = source.splitlines()
    for n in range(min(line, len(lines) - 1), max(line - 6, -1), -1):
        quotes = [i for i, c in enumerate(lines[n]) if c == '"' and lines[n][i - 1 : i] != "\\"]
        if len(quotes) % 2:
            return Problem(
                file,
                n + 1,
                quotes[0] + 1,
                'a quote (") on this line is never closed: close it, or write \\" for a '
                "quote inside the text",
            )
    problem = str(exc.problem)
    if "block end" in problem or "mapping values are not allowed" in problem:
        found = _misplaced_key(lines, line)
        if found is not None:
            return Problem(file, line + 1, found[1], found[0])
    where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(file, *where, f"YAML syntax: {problem}")


def _misplaced_key(lines: list[str], line: int) -> tuple[str, int] | None:
    """Which key is out of place at `line`, and what it belongs under."""
    here = _KEY_LINE.match(lines[line]) if line < len(lines) else None
    if here is None:
        return None
    indent = len(here["indent"])
    for n in range(line - 1, -1, -1):
        owner = _KEY_LINE.match(lines[n])
        if owner is not None and len(owner["indent"]) < indent and lines[n].rstrip().endswith(":"):
            siblings = [
                len(m["indent"])
                for m in map(_KEY_LINE.match, lines[n + 1 : line])
                if m is not None and len(m["indent"]) > len(owner["indent"])
            ]
            expected = min(siblings) if siblings else len(owner["indent"]) + 2
            return (
                f"{here['key']!r} is out of place: as a key of {owner['key']!r} (line {n + 1}) "
                f"it starts in column {expected + 1}, like the keys next to it; here it "
                f"starts in column {indent + 1}",
                indent + 1,
            )
    return None


def _unknown_key(loc: Loc, data: dict[str, Any]) -> str:
    name = str(loc[-1])
    value = data.get(name) if len(loc) == 1 else None
    if isinstance(value, dict) and "text" in value:
        return f"{name!r} looks like a state: put it under states: (indented like the others)"
    hint = did_you_mean(name, KEYS)
    return f"unknown key {name!r}{hint}"


def _compose(source: str) -> yaml.Node | None:
    """LibYAML's parser when PyYAML has it (ten times faster on a big file); a file it
    refuses is read again by the pure-Python parser, whose errors `_syntax_problem`
    words for editors."""
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(source, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass
    return yaml.compose(source, Loader=yaml.SafeLoader)


def _to_python(
    node: yaml.Node, loc: Loc, pos: Positions, problems: list[Problem], scalars: yaml.SafeLoader
) -> Any:
    pos.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = scalars.construct_object(key_node)
            if not isinstance(key, str | int):
                problems.append(pos.at(loc, "mapping keys must be plain names"))
                continue
            key = str(key)
            child = (*loc, key)
            if key in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(Problem(pos.file, line, col, f"duplicate key {key!r}"))
                continue
            pos.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_python(value_node, child, pos, problems, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, (*loc, i), pos, problems, scalars) for i, item in enumerate(node.value)
        ]
    return scalars.construct_object(node)


def _validation_problems(
    exc: ValidationError, positions: Positions, data: dict[str, Any]
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(part for part in err["loc"] if isinstance(part, str | int))
        where = ".".join(str(p) for p in loc) or "top level"
        if err["type"] == "extra_forbidden":
            problems.append(positions.at(loc, _unknown_key(loc, data), key=True))
        elif err["type"] == "missing":
            problems.append(positions.at(loc[:-1], f"missing key {loc[-1]!r} in {where}"))
        else:
            problems.append(positions.at(loc, f"{where}: {err['msg']}"))
    return sorted(set(problems), key=lambda p: (p.line, p.col, p.message))
