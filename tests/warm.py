"""The `trt` program in a process of its own, forked from a warm interpreter.

A cold start of `trt serve` or `trt run` spends about 4 s of CPU importing
aiogram (its types are rebuilt on import); the suite starts the program dozens
of times. The suite's zygote (tests/zygote.py) has imported the program's modules
once; each start is a fork of it that takes the environment, working directory,
stdin and output it is given and runs `trt.cli.main` as the command line does.
It is still a process of its own: signals reach it, kill -9 kills it, and
nothing of it survives but what it wrote. No module of ours reads the
environment on import (settings are read by `main`), so a fork started with an
environment behaves as a cold start with it.

Tests of how the program starts cold (the console script, imports of the
editor commands, logging from a fresh interpreter, a newcomer's `make run`)
start it cold, with subprocess.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests import zygote

# Each started program's stdin and output files, removed when this test process exits
# (made on first use).
_scratch: tempfile.TemporaryDirectory[str] | None = None


def _scratch_dir() -> str:
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryDirectory(prefix="trt-warm-")
    return _scratch.name


def _redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags, 0o600)
    os.dup2(opened, fd)
    os.close(opened)


def _main(args: list[str], io: list[str], prepare: str) -> None:
    """The child: the files of a fresh `trt ARGS` (the zygote has set its environment,
    directory and signal handlers); then `prepare` ("module:function", a test's patch)
    if given."""
    stdin, stdout, stderr = io
    _redirect(0, stdin, os.O_RDONLY)
    _redirect(1, stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    _redirect(2, stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    zygote.reopen_standard_files()
    sys.argv = ["trt", *args]
    if prepare:
        module, _, name = prepare.partition(":")
        getattr(importlib.import_module(module), name)()
    from trt.cli import main

    try:
        code = main(args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # no atexit of the zygote's modules


class Trt:
    """A forked `trt ARGS`, with what tests use of a subprocess: pid, returncode, wait,
    send_signal, kill, and its output so far."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stdin: str = "",
        stdin_path: Path | None = None,
        stdout: Path | None = None,
        stderr: Path | None = None,
        prepare: str = "",
    ) -> None:
        """`stdin` is all the program reads, or `stdin_path` names what it reads from
        (a FIFO the test writes to); its output goes to files. `prepare` names a function
        ("module:function") the child calls before `main`."""
        self._dir = Path(tempfile.mkdtemp(dir=_scratch_dir()))
        if stdin_path is None:
            stdin_path = self._dir / "stdin"
            stdin_path.write_text(stdin, encoding="utf-8")
        self.stdout_path = stdout or self._dir / "stdout"
        self.stderr_path = stderr or self._dir / "stderr"
        io = [str(stdin_path), str(self.stdout_path), str(self.stderr_path)]
        self._child = zygote.start(
            "tests.warm:_main", [list(args), io, prepare], env=dict(env), cwd=str(cwd)
        )
        self.pid: int = self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.poll()

    async def wait(self) -> int:
        """The exit code, negative for a signal, as asyncio's processes report it."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(self._child.fileno(), done.set_result, None)
        try:
            await done
        finally:
            loop.remove_reader(self._child.fileno())
        return self.join()

    def join(self, timeout: float | None = None) -> int:
        code = self._child.join(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["trt"], timeout or 0)
        return code

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def kill(self) -> None:
        self._child.kill()

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdin: str = "",
    timeout: float = 60,
    prepare: str = "",
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(["trt", *args], input=stdin, capture_output=True, text=True)`,
    forked warm."""
    process = Trt(args, env=env, cwd=cwd, stdin=stdin, prepare=prepare)
    try:
        code = process.join(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.join()
        raise
    return subprocess.CompletedProcess(
        ["trt", *args], code, stdout=process.stdout(), stderr=process.stderr()
    )


def wait_for_output(process: Trt, needle: str, timeout: float = 30) -> str:
    """The program's stdout once it contains `needle` (a prompt it printed)."""
    deadline = time.monotonic() + timeout
    while needle not in (out := process.stdout()):
        if process.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never printed: {out[-2000:]}{process.stderr()}")
        time.sleep(0.05)
    return out
