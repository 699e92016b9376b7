"""Telegram's side of the webhook: delivers each update until it is acknowledged.

Why a model of Telegram and not plain POSTs: what makes the service correct under
faults is that Telegram delivers an update again (same update_id, same body) whenever
it did not get a 200, so the campaign must deliver the way Telegram does. Any answer
but 200, a refused or cut connection, or no answer in time means "try again later",
with a growing pause, up to a bound. Several updates (of different users) may be in
flight at once, up to max_connections, as with setWebhook's max_connections.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from trt.webhook import SECRET_HEADER

# Telegram waits this long for an answer before it counts the delivery as failed.
ANSWER_TIMEOUT_S = 30.0


@dataclass
class Delivery:
    """One update's story: every attempt's outcome, and whether it was acknowledged."""

    update: dict[str, Any]
    attempts: list[str] = field(default_factory=list)  # "200", "503", "ClientOSError"...
    acked: bool = False

    @property
    def update_id(self) -> int:
        return int(self.update["update_id"])

    @property
    def redelivered(self) -> int:
        return max(0, len(self.attempts) - 1)


class Courier:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        max_connections: int = 4,
        bound_s: float = 120.0,
    ) -> None:
        self.url = url
        self.secret = secret
        self.bound_s = bound_s
        self.deliveries: list[Delivery] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def deliver(self, update: dict[str, Any]) -> Delivery:
        """Until a 200 or the bound; back-off 0.25 s doubling to 2 s between attempts."""
        assert self._http is not None
        delivery = Delivery(update)
        self.deliveries.append(delivery)
        headers = {SECRET_HEADER: self.secret}
        deadline = time.monotonic() + self.bound_s
        pause = 0.25
        while True:
            async with self._slots:
                try:
                    async with self._http.post(self.url, json=update, headers=headers) as resp:
                        await resp.read()
                        outcome = str(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = type(exc).__name__
            delivery.attempts.append(outcome)
            if outcome == "200":
                delivery.acked = True
                return delivery
            if time.monotonic() + pause > deadline:
                return delivery
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
