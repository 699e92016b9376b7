"""One warm interpreter that the suite's processes are forked from.

Importing aiogram costs about 5 s of CPU (pydantic builds its ~450 types on
import). The suite used to pay it in every pytest-xdist worker and again in each
worker's multiprocessing forkserver: eight times a run on this 2-core machine,
a quarter of an idle `make test`. The zygote imports the libraries and our
packages once and forks on request:

- the xdist workers: the `python` that execnet starts for a worker is this file
  run as `python -S tests/zygote.py python -u -c CODE`, a client that hands its
  stdin, stdout and stderr to a fork which runs CODE as `python -c` would;
- the `trt` programs and ledger workers that tests start (tests/warm.py).

A forked process is a process of its own: its own pid, signals reach it, kill -9
kills it, and nothing of it survives but what it wrote. Its exit status reaches the
requester through the connection that asked for it (`Child`). The zygote does
nothing but import before it forks: no event loop, no thread, no setting read (no
module of ours reads the environment on import), so a fork behaves as a cold start
with the environment and directory it is given. Test modules are not preloaded:
pytest must import them itself, to rewrite their asserts.

The zygote lives as long as the process that started it (`ensure_running`: the
pytest controller, or a single test process on first use): it exits when its
stdin, a pipe from that process, ends.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

ADDRESS_ENV = "TRT_TEST_ZYGOTE"
PRELOAD = [
    "aiogram",
    "aiogram.client.session.aiohttp",
    "aiogram.webhook.aiohttp_server",
    "aiohttp.web",
    "sqlalchemy.ext.asyncio",
    "aiosqlite",
    "asyncpg",
    "alembic.command",
    "engine",
    "flows",
    "storage.ledger",
    "storage.migrate",
    "pricing",
    "kie",
    "trt.cli",
    "trt.serve",
    "trt.run",
    "trt.product",
]
_INT = struct.Struct("!i")
_MAX_FDS = 8


# ---------------------------------------------------------------- the requester's side


def ensure_running() -> str:
    """The zygote's address: the one this process was given (an xdist worker inherits
    the controller's), or a zygote started now for this process and its children."""
    address = os.environ.get(ADDRESS_ENV)
    if address:
        return address
    directory = tempfile.mkdtemp(prefix="trt-zygote-")
    address = os.path.join(directory, "zygote.sock")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.zygote", "serve", address], stdin=subprocess.PIPE, cwd=root
    )

    def stop() -> None:
        assert server.stdin is not None
        server.stdin.close()  # its end of the session
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    os.environ[ADDRESS_ENV] = address
    return address


class Child:
    """A process the zygote forked for us: what tests use of a subprocess."""

    def __init__(self, connection: socket.socket, pid: int) -> None:
        self._connection = connection
        self.pid = pid
        self._code: int | None = None

    def fileno(self) -> int:
        """Readable once the process has ended (for a loop's add_reader); open as long
        as this object lives, as a multiprocessing sentinel is."""
        return self._connection.fileno()

    def poll(self) -> int | None:
        """The exit code once the process has ended, negative for a signal."""
        return self.join(0) if self._code is None else self._code

    def join(self, timeout: float | None = None) -> int | None:
        if self._code is None:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if ready:
                self._code = _read_int(self._connection)
        return self._code

    @property
    def exitcode(self) -> int | None:
        return self.poll()

    def kill(self) -> None:
        if self.poll() is None:  # not once it is reaped: its pid may be another's by then
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(
    target: str,
    args: Sequence[Any] = (),
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    fds: Sequence[int] = (),
    stdio: bool = False,
) -> Child:
    """Fork `target` ("module:function", called with `args` and then the passed `fds`
    as keyword `fds`) with `env` and `cwd` (this process's by default). With `stdio`,
    the first three `fds` become the child's stdin, stdout and stderr."""
    address = ensure_running()
    request = {
        "target": target,
        "args": list(args),
        "env": dict(os.environ if env is None else env),
        "cwd": cwd or os.getcwd(),
        "stdio": stdio,
    }
    payload = json.dumps(request).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(200):  # the zygote binds its socket first thing; until then, wait
        try:
            connection.connect(address)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    else:
        raise RuntimeError(f"no zygote answers at {address}")
    socket.send_fds(connection, [_INT.pack(len(payload))], list(fds))
    connection.sendall(payload)
    return Child(connection, _read_int(connection))


def _read_int(connection: socket.socket) -> int:
    data = b""
    while len(data) < _INT.size:
        chunk = connection.recv(_INT.size - len(data))
        if not chunk:
            raise RuntimeError("the zygote closed the connection (did it die?)")
        data += chunk
    return int(_INT.unpack(data)[0])


def python_client(argv: Sequence[str]) -> int:
    """`python -u -c CODE`, run in a fork of the zygote: what execnet starts for a
    pytest-xdist worker. Signals this client receives are passed on to the fork."""
    code = argv[list(argv).index("-c") + 1]
    child = start("tests.zygote:_python_c", [code], fds=[0, 1, 2], stdio=True)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda n, _frame: os.kill(child.pid, n))
    while (status := child.join(None)) is None:
        pass
    return status if status >= 0 else 128 - status


# ---------------------------------------------------------------- the fork's side


def _python_c(code: str) -> None:
    """The body of `python -c CODE`: a fresh `__main__`, `sys.path[0] == ""`."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["-c"]
    sys.path[0] = ""
    exec(compile(code, "<string>", "exec"), main.__dict__)


def reopen_standard_files() -> None:
    """sys.stdin, stdout and stderr on whatever fds 0, 1 and 2 are now (the zygote's
    own objects may hold its buffers)."""
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _become(request: dict[str, Any], fds: list[int]) -> Callable[[], object]:
    """In the fork: the environment, directory, standard files and signal handlers of a
    fresh process; returns the call that is its life."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request["stdio"]:
        for number, fd in enumerate(fds[:3]):
            os.dup2(fd, number)
            os.close(fd)
        fds = fds[3:]
        reopen_standard_files()
    module, _, name = request["target"].partition(":")
    function = getattr(importlib.import_module(module), name)
    args = request["args"]
    return (lambda: function(*args, fds=fds)) if fds else (lambda: function(*args))


# ---------------------------------------------------------------- the zygote


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _flags, _address = socket.recv_fds(connection, _INT.size, _MAX_FDS)
    while len(head) < _INT.size:
        head += connection.recv(_INT.size - len(head))
    (size,) = _INT.unpack(head)
    payload = b""
    while len(payload) < size:
        chunk = connection.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("request cut short")
        payload += chunk
    return json.loads(payload), fds


def serve(address: str) -> Callable[[], object] | None:
    """Listen at `address`, preload, then fork per request. Returns in a fork, with the
    call that is its life; returns None in the zygote when its stdin ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)  # requesters wait in the backlog while the imports run
    for module in PRELOAD:
        importlib.import_module(module)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _n, _f: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for pytest; we end with it
    waiting: dict[int, socket.socket] = {}
    while True:
        try:
            ready, _, _ = select.select([listener, sys.stdin, wake_r], [], [])
        except InterruptedError:
            continue
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            break
        if wake_r in ready:
            os.read(wake_r, 512)
            _reap(waiting)
        if listener in ready:
            connection, _ = listener.accept()
            try:
                request, fds = _receive(connection)
            except (OSError, ValueError):
                connection.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                os.close(wake_r)
                os.close(wake_w)
                for other in waiting.values():
                    other.close()
                connection.close()
                return _become(request, fds)
            for fd in fds:
                os.close(fd)
            connection.sendall(_INT.pack(pid))
            waiting[pid] = connection
            _reap(waiting)
    listener.close()
    os.unlink(address)
    return None


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = waiting.pop(pid, None)
        if connection is not None:
            try:
                connection.sendall(_INT.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # the requester is gone
            connection.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        life = serve(argv[1])
        if life is None:
            return 0
        life()
        return 0
    if argv[:1] == ["python"]:
        return python_client(argv[1:])
    print("usage: python -m tests.zygote serve ADDRESS | python -u -c CODE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
