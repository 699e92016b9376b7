"""The suite's warm interpreter (tests/zygote.py): what its forks are given and what
their requesters learn, since every warm `trt` and every xdist worker relies on it."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests import zygote


def report(path: str, code: int) -> None:
    """A fork's life: write what it was given to `path`, exit with `code`."""
    Path(path).write_text(f"{os.getcwd()}|{os.environ.get('ZYGOTE_TEST', '')}|{os.getppid()}")
    os._exit(code)


def sleep_forever() -> None:
    time.sleep(3600)


def echo(*, fds: list[int]) -> None:
    with socket.socket(fileno=fds[0]) as connection:
        connection.sendall(connection.recv(100).upper())


def test_a_fork_gets_the_given_environment_and_directory_and_reports_its_exit_code(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    child = zygote.start(
        "tests.test_zygote:report",
        [str(out), 7],
        env={"ZYGOTE_TEST": "given", "PATH": os.environ["PATH"]},
        cwd=str(tmp_path),
    )
    assert child.join(30) == 7
    cwd, value, parent = out.read_text().split("|")
    assert (cwd, value) == (str(tmp_path), "given")
    assert int(parent) != os.getpid()  # the zygote's child, not ours
    assert child.poll() == 7 and child.exitcode == 7


def test_kill_9_kills_the_fork_and_is_reported_as_a_signal() -> None:
    child = zygote.start("tests.test_zygote:sleep_forever")
    assert child.join(0.2) is None and child.poll() is None
    child.kill()
    assert child.join(30) == -signal.SIGKILL


def test_passed_file_descriptors_reach_the_fork() -> None:
    ours, theirs = socket.socketpair()
    child = zygote.start("tests.test_zygote:echo", fds=[theirs.fileno()])
    theirs.close()
    ours.sendall(b"hello")
    assert ours.recv(100) == b"HELLO"
    assert child.join(30) == 0
    ours.close()
