"""`trt run` with no BOT_TOKEN, as a newcomer's `make run` starts it: a process with
the local Telegram and the terminal chat, driven through its stdin.

A newcomer's first minute runs the program cold, as `python -m trt.cli`; the other
cases fork it from a warm interpreter (tests.warm), which skips seconds of imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests import warm
from tests.harness import ROOT

TRT = [sys.executable, "-m", "trt.cli"]


def local_env(tmp_path: Path, **over: str) -> dict[str, str]:
    """A newcomer's environment: no BOT_TOKEN, a fresh SQLite file, the real flows."""
    env = {k: v for k, v in os.environ.items() if k not in ("BOT_TOKEN", "DATABASE_URL")}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    env["FLOWS_PATH"] = str(ROOT / "flows.yaml")
    return env | over


def trt(
    args: list[str], tmp_path: Path, stdin: str = "", *, cold: bool = False
) -> subprocess.CompletedProcess[str]:
    if not cold:
        return warm.run(args, env=local_env(tmp_path), cwd=tmp_path, stdin=stdin)
    return subprocess.run(
        TRT + args,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=local_env(tmp_path),
        timeout=60,
    )


def test_run_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = trt(["run"], tmp_path, stdin=":quit\n")
    assert result.returncode == 1
    assert "run `trt migrate`" in result.stderr


def test_run_without_token_generates_in_the_terminal(tmp_path: Path) -> None:
    """A newcomer's first minute: free models, the first one, start, a prompt, confirm,
    and the picture arrives from the local KIE."""
    assert trt(["migrate"], tmp_path).returncode == 0
    script = "/start\n1\n1\n1\na red fox in the snow\n1\n:wait\n:quit\n"
    result = trt(["run"], tmp_path, stdin=script, cold=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "No BOT_TOKEN: a local Telegram runs at http://127.0.0.1:" in out
    assert "No KIE_API_KEY: a local KIE runs at http://127.0.0.1:" in out
    assert "Главное меню" in out and "[1] 🆓 Бесплатные модели" in out
    after_confirm = out.split("> a red fox in the snow", 1)[1]
    assert "Проверьте заказ" in after_confirm and "Цена: бесплатно" in after_confirm
    assert "⏳ Генерация запущена" in after_confirm
    assert "bot: [photo] ✅" in after_confirm.split("> :wait", 1)[1]
    assert "✅ Готово:" in after_confirm


def test_the_local_chat_pays_switches_language_and_says_when_nothing_is_coming(
    tmp_path: Path,
) -> None:
    """A balance without a real payment: :pay pays the last invoice as Telegram would
    (pre-checkout, then the payment), :lang en shows the screens in English, and :wait
    with no job running says so at once instead of waiting a minute."""
    assert trt(["migrate"], tmp_path).returncode == 0
    script = "/start\n:wait\n:pay\n8\n1\n1\n:pay\n:lang en\n8\n:quit\n"
    result = trt(["run"], tmp_path, stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(nothing is on its way: no job is running)" in out.split("> :wait", 1)[1]
    assert "(no invoice to pay" in out.split("> :pay", 1)[1].split("> 8", 1)[0]
    paid = out.split("> :pay", 2)[2]
    assert "(paid 100 XTR)" in paid and "Оплата получена: 150 ₽ зачислено" in paid
    english = out.split("> :lang en", 1)[1]
    assert "Main menu" in english and "Available: 150 ₽" in english


def test_run_in_english_and_ctrl_c_ends_it_cleanly(tmp_path: Path) -> None:
    assert trt(["migrate"], tmp_path).returncode == 0
    result = trt(["run", "--lang", "en"], tmp_path, stdin="/start\n:quit\n")
    assert result.returncode == 0, result.stderr
    assert "Main menu" in result.stdout
    # Its stdin never ends: the chat waits at the prompt until Ctrl-C.
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open, so the chat never reads an end
    try:
        chat = warm.Trt(["run"], env=local_env(tmp_path), cwd=tmp_path, stdin_path=fifo)
        warm.wait_for_output(chat, "Type /start")
        chat.send_signal(signal.SIGINT)  # Ctrl-C at the prompt
    finally:
        os.close(writer)  # as a terminal closes: the reader blocked in readline returns
    code = chat.join(30)
    errors = chat.stderr()
    assert code == 0, errors
    assert "Traceback" not in errors


def test_a_bad_database_url_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    env = local_env(tmp_path, DATABASE_URL="postgres://nowhere")  # no async driver named
    for command in (["run"], ["migrate"], ["serve"]):
        result = subprocess.run(
            [*TRT, *command], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
        )
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trt: DATABASE_URL"), result.stderr
        assert "Traceback" not in result.stderr
