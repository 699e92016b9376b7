"""`trt serve` as a real process, under a supervisor that restarts it when it dies.

Why a process and not the in-process stack: a crash must be a real `kill -9`, so
nothing of the dead process (tasks, pools, locks, buffers) survives into the next one
but the database. The supervisor plays Render/systemd: whenever the process exits it
is started again on the same port and database, so Telegram's redeliveries and KIE's
callbacks (PUBLIC_BASE_URL) reach the new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import aiohttp

from tests.warm import Trt

TRT = str(Path(sys.executable).parent / "trt")
TOKEN = "123456:AAFakeTokenForTheFaultCampaign_abcdef"
WEBHOOK_SECRET = "fault-campaign-secret_0123456789"
ADMIN_ID = 777
JOB_TIMEOUT_S = 20
SWEEP_INTERVAL_S = 1
# TRT_FAULTS_COLD=1: every start a cold `trt serve` as a deploy runs it, not a fork of a
# warm interpreter (tests.warm); slower by the ~4 s of imports per start.
COLD_START = os.environ.get("TRT_FAULTS_COLD") == "1"
# Settings prefixes of ours that must not leak from the caller's environment.
_OURS = ("BOT_", "TELEGRAM_", "WEBHOOK_", "KIE_", "DB_", "DATABASE_", "FLOOD_", "JOB_", "POLL_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(
    *, telegram: str, kie: str, kie_key: str, database_url: str, port: int
) -> dict[str, str]:
    """The environment `trt serve` runs with: webhook mode against the fakes.

    Short timeouts where the code reads them from settings, so time passes quickly but
    honestly: polls every second (callbacks usually come first), a job deadline of 20 s,
    a delivery lease of 10 s. Flood control is opened wide: the campaign's users tap
    faster than people, and shedding is not what is under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    for key in ("PORT", "HOST", "PUBLIC_BASE_URL", "ENVIRONMENT", "LOG_FORMAT", "FLOWS_PATH"):
        env.pop(key, None)
    base = f"http://127.0.0.1:{port}"
    return env | {
        "BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE": telegram,
        "KIE_API_KEY": kie_key,
        "KIE_BASE_URL": kie,
        "PUBLIC_BASE_URL": base,
        "WEBHOOK_URL": base + "/telegram/webhook",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_MAX_CONNECTIONS": "4",
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ENVIRONMENT": "production",
        "LOG_LEVEL": "INFO",
        "POLL_INTERVAL_S": "1",
        "POLL_MAX_INTERVAL_S": "2",
        "JOB_TIMEOUT_S": str(JOB_TIMEOUT_S),
        "SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "DELIVERY_LEASE_S": "10",
        "RESULT_FETCH_ALLOW": "127.0.0.1",
        "ADMIN_IDS": str(ADMIN_ID),
        "WELCOME_BONUS_RUB": "0",
        "FLOOD_RATE": "1000",
        "FLOOD_BURST": "1000",
        "FLOOD_IN_FLIGHT": "100",
        "SHUTDOWN_TIMEOUT_S": "5",
    }


class Service:
    """One `trt serve`, restarted whenever it exits, until `close`."""

    def __init__(self, env: Mapping[str, str], port: int, log: IO[str], cwd: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | Trt | None = None
        self.kills = 0
        self.restarts = 0
        self.unexpected_exits: list[int] = []  # exit codes of deaths we did not cause
        self.started_at = time.time()  # wall time of the current process's start
        self._killed_pids: set[int] = set()
        self._up = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._supervisor = asyncio.create_task(self._supervise())
        await self.ready(60)

    async def _supervise(self) -> None:
        while not self._closing:
            self.started_at = time.time()
            self.log.flush()
            if COLD_START:
                self.process = await asyncio.create_subprocess_exec(
                    TRT, "serve", env=self.env, cwd=self.cwd, stdout=self.log, stderr=self.log
                )
            else:
                log = Path(self.log.name)
                self.process = Trt(["serve"], env=self.env, cwd=self.cwd, stdout=log, stderr=log)
            self._up.set()
            code = await self.process.wait()
            self._up.clear()
            if self._closing:
                return
            if self.process.pid not in self._killed_pids:
                self.unexpected_exits.append(code)
                self.log.write(f"\n### trt serve exited by itself with code {code}\n")
            self.restarts += 1
            # A supervisor's restart delay: Telegram and KIE meet a dead port meanwhile.
            await asyncio.sleep(0.3)

    def kill(self) -> None:
        """kill -9, synchronously: called from inside a fake's request handler, so the
        process dies before the fake's answer can reach it."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._killed_pids.add(process.pid)
        self.kills += 1
        self.log.write(f"\n### kill -9 {process.pid}\n")
        self.log.flush()
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)

    async def ready(self, within_s: float = 60) -> None:
        """Until the current process answers /readyz with 200."""
        assert self._http is not None
        async with asyncio.timeout(within_s):
            while True:
                await self._up.wait()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    timeout = aiohttp.ClientTimeout(total=2)
                    async with self._http.get(self.base + "/readyz", timeout=timeout) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def close(self) -> int | None:
        """SIGTERM, as a deploy would; the exit code (None when it had to be killed)."""
        self._closing = True
        code: int | None = None
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    code = await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._http is not None:
            await self._http.close()
        return code
