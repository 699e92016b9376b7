"""The static checker: every rule, on mutations of the real flows.yaml, with line numbers."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from engine.checker import check_flow
from engine.loader import FlowError, parse_flow
from flows.registry import build_registry
from tests import warm

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "flows.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str, start: int = 0) -> int:
    """1-based line of the first occurrence of `needle` at or after line `start`."""
    lines = text.splitlines()
    for i in range(start, len(lines)):
        if needle in lines[i]:
            return i + 1
    raise AssertionError(f"{needle!r} not in text")


def problems(text: str) -> list[str]:
    try:
        flow = parse_flow(text, "f.yaml")
    except FlowError as exc:
        return [str(p) for p in exc.problems]
    return [str(p) for p in check_flow(flow, build_registry()).problems]


def test_real_file_is_valid_and_lists_unimplemented() -> None:
    report = check_flow(parse_flow(SOURCE), build_registry())
    assert report.problems == []
    assert report.unimplemented_actions == []
    assert report.unimplemented_providers == []
    registry = build_registry()
    registry.actions.pop("buy_package")
    registry.data_providers.pop("referral_info")
    report = check_flow(parse_flow(SOURCE), registry)
    assert report.unimplemented_actions == ["buy_package"]
    assert report.unimplemented_providers == ["referral_info"]


def test_state_that_lost_its_back_route_is_rejected_at_its_line() -> None:
    # The mutation the issue asks for: drop `parent: main` from the help state.
    help_line = line_of(SOURCE, "  help:", line_of(SOURCE, "states:"))
    lines = SOURCE.splitlines()
    assert lines[help_line].strip() == "parent: main"
    del lines[help_line]
    found = problems("\n".join(lines))
    assert found == [
        f"f.yaml:{help_line}:3: state 'help' has no back route (set 'parent' or 'back')"
    ]


def test_yaml_syntax_error_has_line_and_column() -> None:
    found = problems("locales: [ru, en\nroot: main\n")
    assert len(found) == 1
    assert found[0].startswith("f.yaml:2:")
    assert "YAML syntax" in found[0]


UNCLOSED = (
    'a quote (") on this line is never closed: close it, or write \\" for a quote inside the text'
)


def with_line(index: int, text: str) -> str:
    lines = SOURCE.splitlines()
    lines[index] = text
    return "\n".join(lines)


def index_of(prefix: str) -> int:
    return next(n for n, line in enumerate(SOURCE.splitlines()) if line.startswith(prefix))


def test_an_unclosed_quote_points_at_the_line_that_opened_it() -> None:
    """PyYAML gives up lines below ("expected ',' or '}'"); the editor needs the line
    where the quote opened."""
    block = index_of('      ru: "<b>Помощь')
    mutated = with_line(block, SOURCE.splitlines()[block][:-1])
    assert problems(mutated) == [f"f.yaml:{block + 1}:11: {UNCLOSED}"]
    flow = index_of("  price_free:")
    mutated = with_line(flow, '  price_free: {ru: "бесплатно, en: "free"}')
    assert problems(mutated) == [f"f.yaml:{flow + 1}:20: {UNCLOSED}"]


def test_a_mis_indented_key_says_what_it_belongs_under() -> None:
    help_state = SOURCE.splitlines().index("  help:")
    mutated = with_line(help_state + 2, "   text:")
    assert problems(mutated) == [
        f"f.yaml:{help_state + 3}:4: 'text' is out of place: as a key of 'help' "
        f"(line {help_state + 1}) it starts in column 5, like the keys next to it; "
        "here it starts in column 4"
    ]


def test_unknown_key_is_reported_at_the_key() -> None:
    mutated = SOURCE.replace(
        "    parent: main\n    data: [kind_info]", "    parnt: main\n    data: [kind_info]"
    )
    line = line_of(mutated, "parnt: main")
    found = problems(mutated)
    assert f"f.yaml:{line}:5: unknown key 'parnt' (did you mean 'parent'?)" in found


def test_unknown_target_state() -> None:
    mutated = SOURCE.replace("to: help\n", "to: helpp\n")
    line = line_of(mutated, "to: helpp")
    assert f"f.yaml:{line}:15: unknown state 'helpp' (did you mean 'help'?)" in problems(mutated)


def test_names_far_from_any_known_get_no_suggestion() -> None:
    mutated = SOURCE.replace("to: help\n", "to: xyzzy\n").replace(
        "action: buy_package", "action: buy_pakage"
    )
    found = problems(mutated)
    assert any(p.endswith("unknown state 'xyzzy'") for p in found), found
    assert any(
        p.endswith("unknown action 'buy_pakage' (did you mean 'buy_package'?)") for p in found
    )
    typo = SOURCE.replace("Ваша ссылка: {link}", "Ваша ссылка: {lnik}")
    assert any(
        p.endswith("unknown placeholder {lnik} (did you mean 'link'?)") for p in problems(typo)
    )


def test_a_state_dedented_to_the_top_level_is_named_as_such() -> None:
    lines = SOURCE.splitlines()
    start = lines.index("  help:")
    end = start + 1
    while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
    mutated = "\n".join([*lines[:start], *(x[2:] for x in lines[start:end]), *lines[end:]])
    assert problems(mutated) == [
        f"f.yaml:{start + 1}:1: 'help' looks like a state: put it under states: "
        "(indented like the others)"
    ]


def test_unreachable_state() -> None:
    mutated = SOURCE + "\n  orphan:\n    parent: main\n    text: {ru: 'a', en: 'b'}\n"
    line = line_of(mutated, "  orphan:")
    assert (
        f"f.yaml:{line}:3: no button or action leads to state 'orphan' "
        "(from 'main', nor from a pushed state)" in problems(mutated)
    )


def test_back_loop() -> None:
    mutated = SOURCE.replace("  params:\n    parent: model", "  params:\n    parent: param_choice")
    found = problems(mutated)
    assert any("back chain loops: params -> param_choice -> params" in p for p in found)


def test_missing_locale_text() -> None:
    mutated = SOURCE.replace('help: {ru: "❓ Помощь", en: "❓ Help"}', "")
    mutated = mutated.replace('text: {ru: "❓ Помощь", en: "❓ Help"}', 'text: {ru: "❓ Помощь"}')
    line = line_of(mutated, 'text: {ru: "❓ Помощь"}')
    assert f"f.yaml:{line}:17: missing 'en' text" in problems(mutated)


def test_duplicate_button_id() -> None:
    mutated = SOURCE.replace("        - id: help\n", "        - id: referral\n")
    assert any("duplicate button id 'referral' in 'main'" in p for p in problems(mutated))


def test_duplicate_yaml_key() -> None:
    mutated = SOURCE.replace("root: main\n", "root: main\nroot: help\n")
    line = line_of(mutated, "root: help")
    assert f"f.yaml:{line}:1: duplicate key 'root'" in problems(mutated)


def test_unknown_action_and_provider() -> None:
    mutated = SOURCE.replace("action: buy_package", "action: top_upp").replace(
        "data: [history_info]", "data: [history_infoo]"
    )
    found = problems(mutated)
    assert any("unknown action 'top_upp'" in p for p in found)
    assert any("unknown provider 'history_infoo'" in p for p in found)


def test_callback_data_that_could_exceed_64_bytes() -> None:
    mutated = SOURCE.replace(
        "      store: model\n", "      store: model\n      max_value_length: 60\n"
    )
    line = line_of(mutated, "max_value_length: 60")
    found = problems(mutated)
    assert any(p.startswith(f"f.yaml:{line}:") and "can reach 75 bytes" in p for p in found)


def test_unknown_placeholder_and_malformed_braces() -> None:
    mutated = SOURCE.replace("Ваша ссылка: {link}", "Ваша ссылка: {lnk}").replace(
        "<b>Помощь</b>", "<b>Помощь {</b>"
    )
    found = problems(mutated)
    assert any("unknown placeholder {lnk}" in p for p in found)
    assert any("malformed placeholder braces" in p for p in found)


HELP_RU = "<b>Помощь</b>\\nВыберите вид работы"


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("<b>Помощь\\nВыберите вид работы", "<b> is opened but never closed"),
        (
            "<b>Помощь</i></b>\\nВыберите вид работы",
            "</i> closes <b>: close the inner tag first",
        ),
        (
            "<h1>Помощь</h1>\\nВыберите вид работы",
            "<h1> is not a tag Telegram supports "
            "(b, i, u, s, a href, code, pre, blockquote, tg-spoiler)",
        ),
        ("<b>Помощь</b> & ответы\\nВыберите вид работы", "a bare '&' at character 15: write &amp;"),
        ("<b>Помощь</b> 1 < 2\\nВыберите вид работы", "a bare '<' at character 17: write &lt;"),
        (
            "<a href='javascript:x'>Помощь</a>\\nВыберите вид работы",
            '<a href="javascript:x">: not a link (http://, https:// or tg://)',
        ),
        (
            "<b>Помощь</b>&nbsp;\\nВыберите вид работы",
            "&nbsp; is not an entity Telegram knows (only &lt; &gt; &amp; &quot; and numeric ones)",
        ),
    ],
)
def test_html_telegram_would_refuse_is_an_error_at_its_line(broken: str, expected: str) -> None:
    """`ok` means every screen shows: Telegram refuses a whole message over one bad tag."""
    assert SOURCE.count(HELP_RU) == 1
    mutated = SOURCE.replace(HELP_RU, broken)
    line = line_of(mutated, broken[:12])
    found = problems(mutated)
    assert found == [f"f.yaml:{line}:11: Telegram would refuse this text: {expected}"]


def test_html_in_product_texts_and_placeholders_in_links_are_checked() -> None:
    mutated = SOURCE.replace('price_free: {ru: "', 'price_free: {ru: "<b>').replace(
        "Ваша ссылка: {link}", "Ваша <a href='{link}'>ссылка</a>"
    )
    found = problems(mutated)
    line = line_of(mutated, "price_free:")
    assert [p for p in found if "Telegram would refuse" in p] == [
        f"f.yaml:{line}:{line_col(mutated, line)}: Telegram would refuse this text: "
        "<b> is opened but never closed"
    ], found


def line_col(text: str, line: int) -> int:
    """The column of the first quoted value on `line` (where the checker points)."""
    return text.splitlines()[line - 1].index('"') + 1


def test_a_screen_over_telegrams_4096_is_an_error() -> None:
    """A 4,923-character state text passed the old check; Telegram refuses it."""
    long_help = "<b>Помощь</b>\\n" + "Длинная справка. " * 289
    mutated = SOURCE.replace(HELP_RU, long_help)
    line = line_of(mutated, "Длинная справка.")
    found = problems(mutated)
    assert len(found) == 1 and found[0].startswith(f"f.yaml:{line}:11: "), found
    assert "can reach" in found[0] and "at most 4096" in found[0]


def test_values_count_at_their_declared_length() -> None:
    """The confirm screen with the whole prompt (2,000 characters, up to 4,000 code
    units) could overflow: the file shows at most 1,000 ({prompt:.1000}); without that
    cap, the check says so."""
    mutated = SOURCE.replace("{prompt:.1000}", "{prompt}")
    found = problems(mutated)
    assert len(found) == 2 and all("can reach" in p for p in found), found
    undeclared = SOURCE.replace("provides: {history: 2000}", "provides: [history]")
    found = problems(undeclared)
    assert len(found) == 2 and all("{history} has no declared length" in p for p in found)
    bad_format = SOURCE.replace("{prompt:.1000}", "{prompt:>10}")
    assert any("the only format is :.N" in p for p in problems(bad_format))


def test_text_input_needs_example() -> None:
    mutated = SOURCE.replace('      example: "a red fox in the snow, watercolor"\n', "")
    assert any("needs an 'example'" in p for p in problems(mutated))


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (SOURCE, 0),
        (
            SOURCE.replace(
                'parent: main\n    text:\n      ru: "<b>Помощь', 'text:\n      ru: "<b>Помощь'
            ),
            1,
        ),
    ],
)
def test_cli_exit_codes(tmp_path: Path, content: str, code: int) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text(content, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "trt.cli", "flows", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == code, result.stderr
    if code:
        assert f"{path}:" in result.stderr and "no back route" in result.stderr


def test_the_editor_commands_import_no_aiogram() -> None:
    """`trt flows check` is an editor's loop: it reads the registry's names, never
    aiogram (seconds of imports). Checked in a fresh interpreter, as the command runs."""
    probe = (
        "import sys\n"
        "from trt.cli import main\n"
        "for argv in (['flows', 'check'], ['flows', 'paths'], ['flows', 'graph']):\n"
        "    assert main(argv) == 0, argv\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('aiogram', 'aiohttp'))\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]


BROKEN_TARGET = SOURCE.replace("to: history", "to: histroy", 1)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["flows", "graph", "{path}"], {}),
        (["flows", "paths", "{path}"], {}),
        (["run"], {"FLOWS_PATH": "{path}"}),
        (["serve"], {"FLOWS_PATH": "{path}"}),
    ],
    ids=["graph", "paths", "run", "serve"],
)
def test_commands_refuse_a_file_that_fails_the_check(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    """A typo in a target used to start the bot (every tap: "menu is out of date") and
    to draw a graph without the broken edge. Now each command prints the problem."""
    assert BROKEN_TARGET != SOURCE
    path = tmp_path / "flows.yaml"
    path.write_text(BROKEN_TARGET, encoding="utf-8")
    line = line_of(BROKEN_TARGET, "to: histroy")
    args = [a.format(path=path) for a in argv]
    environment = {**os.environ, **{k: v.format(path=path) for k, v in env.items()}}
    if args[0] in ("run", "serve"):  # the bot's commands: forked warm (tests.warm)
        result = warm.run(args, env=environment, cwd=ROOT)
    else:
        result = subprocess.run(
            [sys.executable, "-m", "trt.cli", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=environment,
            check=False,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert f"{path}:{line}:" in result.stderr and "unknown state 'histroy'" in result.stderr
    assert result.stdout == ""


def test_commands_name_existing_screens_and_never_start() -> None:
    assert SOURCE.count("commands:\n  help: help\n") == 1
    typo = SOURCE.replace("commands:\n  help: help\n", "commands:\n  help: hlep\n")
    line = line_of(typo, "  help: hlep")
    assert problems(typo) == [f"f.yaml:{line}:9: unknown state 'hlep' (did you mean 'help'?)"]
    start = SOURCE.replace("commands:\n  help: help\n", "commands:\n  start: help\n")
    line = line_of(start, "  start: help")
    assert problems(start) == [f"f.yaml:{line}:3: /start always opens the root state"]


def test_texts_the_product_shows_exist_and_fit_where_they_are_shown() -> None:
    """Notices on a tapped button are plain text of at most 200 characters, a caption at
    most 1024, each with the product's values at their longest; a text the product
    shows must be in the file."""
    notice = SOURCE.replace(
        'promo_ok: {ru: "🎉 Промокод принят!"', 'promo_ok: {ru: "🎉 <b>Промокод</b> принят!"'
    )
    line = line_of(notice, "promo_ok:")
    assert problems(notice) == [
        f"f.yaml:{line}:18: a notice on a button is plain text: Telegram shows tags as typed"
    ]
    long_notice = SOURCE.replace('"Счёт отправлен ниже 👇"', '"' + "Счёт отправлен. " * 13 + '"')
    found = problems(long_notice)
    assert len(found) == 1 and "this notice can reach 208 characters" in found[0], found
    caption = SOURCE.replace(
        'result_caption: {ru: "✅ {model}"', 'result_caption: {ru: "✅ {model} ' + "я" * 900 + '"'
    )
    found = problems(caption)
    assert len(found) == 1 and "this caption can reach 1063 characters" in found[0], found
    gone = SOURCE.replace("  receipt:\n", "  reciept:\n")
    found = problems(gone)
    assert any(
        "the product shows text 'receipt', missing here (did you mean 'reciept'?)" in p
        for p in found
    )
    unfilled = SOURCE.replace(
        'result_caption: {ru: "✅ {model}"', 'result_caption: {ru: "✅ {model} {size}"'
    )
    assert any("{size}: the product does not fill it in this text" in p for p in problems(unfilled))


def test_parsing_again_and_again_keeps_nothing() -> None:
    """A long-running process may reload its flows: a parse must leave nothing behind
    (a module-level YAML loader used to keep every node it built, ~400 KB a parse)."""
    parse_flow(SOURCE)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            parse_flow(SOURCE)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 100_000, f"{kept} bytes kept by 10 parses"
