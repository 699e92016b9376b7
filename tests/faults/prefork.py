"""`trt serve` processes forked from a warm interpreter, instead of started cold.

A cold start of `trt serve` spends about 4 s of CPU importing aiogram (its
types are rebuilt on import), and the fault campaign starts the service again
after every kill -9. multiprocessing's forkserver imports the service's
modules once; each start is then a fork of it that reads its settings from
the environment it is given and runs `trt serve` as the command line does.
It is still a process of its own: kill -9 kills it, and nothing of it
survives but the database. `Service(fresh=True)` starts `trt serve` cold, as
a deploy does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from collections.abc import Mapping
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

# What `trt serve` imports before it reads a setting.
PRELOAD = ["trt.cli", "trt.serve", "trt.product"]

_context: ForkServerContext | None = None


def _forkserver() -> ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _serve(env: dict[str, str], cwd: str, log_path: str) -> None:
    """The child: the environment, working directory and output of a fresh `trt serve`."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from trt.serve import main

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no atexit of the forkserver's modules


class Forked:
    """A forked `trt serve`, with the parts of asyncio.subprocess.Process the supervisor
    uses: pid, returncode, wait, send_signal, kill."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log_path: Path) -> None:
        self._process: BaseProcess = _forkserver().Process(
            target=_serve, args=(dict(env), str(cwd), str(log_path)), daemon=False
        )
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    async def wait(self) -> int:
        """The exit code, negative for a signal, as asyncio's processes report it."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(self._process.sentinel, done.set_result, None)
        try:
            await done
        finally:
            loop.remove_reader(self._process.sentinel)
        self._process.join()
        code = self._process.exitcode
        assert code is not None
        return code

    def send_signal(self, signal: int) -> None:
        os.kill(self.pid, signal)

    def kill(self) -> None:
        self._process.kill()
