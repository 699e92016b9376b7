"""`trt run` with no BOT_TOKEN, as a newcomer's `make run` starts it: a subprocess with
the local Telegram and the terminal chat, driven through its stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

TRT = [sys.executable, "-m", "trt.cli"]


def trt(args: list[str], tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BOT_TOKEN", "DATABASE_URL")}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    env["FLOWS_PATH"] = str(ROOT / "flows.yaml")
    return subprocess.run(
        TRT + args, input=stdin, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
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
    result = trt(["run"], tmp_path, stdin=script)
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
