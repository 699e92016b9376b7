"""What the user reads about a job: one progress message, the result, the end screen.

Split from the service, which decides what happens to the money and to KIE:
this only puts it into words (flows.yaml's texts, each declared in
flows.registry) and shows it. Nothing here changes a job's state; a message
Telegram refuses is logged and never stops the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from engine.outbox import Notifier
from flows.generation.ports import Jobs
from flows.job_words import job_title
from flows.text_keys import PROGRESS_STATES
from pricing.money import rub
from storage.jobs import JobRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResultWords:
    caption: str
    link: str


class JobNotices:
    def __init__(
        self, *, bot: Bot, notifier: Notifier, jobs: Jobs, clock: Callable[[], datetime]
    ) -> None:
        self.bot = bot
        self.notifier = notifier
        self.jobs = jobs
        self.clock = clock

    def result_words(self, job: JobRecord) -> ResultWords:
        """The caption and the link text of a delivered result."""
        text = self.notifier.text
        return ResultWords(
            caption=text("result_caption", job.locale).format(model=job_title(job)),
            link=text("result_link", job.locale),
        )

    async def progress(self, job: JobRecord) -> None:
        """The job's progress message, sent on the first step KIE took and edited after."""
        if job.state in PROGRESS_STATES:
            await self._progress(job, f"progress_{job.state}", first=True)

    async def delivered(self, job: JobRecord) -> None:
        """The progress message says done, and the result screen says what was charged."""
        await self._progress(job, "progress_done", first=False)
        text = self.notifier.text
        charge = (
            text("charged_free", job.locale)
            if job.price == 0
            else text("charged_paid", job.locale).format(price=rub(job.price, job.locale))
        )
        await self._show(job, "job_result", {"job_model": job_title(job), "job_charge": charge})

    async def released(self, job: JobRecord) -> None:
        """The progress message says failed, and the failure screen says why."""
        await self._progress(job, "progress_failed", first=False)
        reason = "job_timeout" if (job.error or "") == "timeout" else "job_failed_reason"
        await self._show(
            job,
            "job_failed",
            {"job_model": job_title(job), "job_reason": self.notifier.text(reason, job.locale)},
        )

    async def _show(self, job: JobRecord, state: str, extra: dict[str, Any]) -> None:
        data = {**dict(job.request.get("data") or {}), **extra}
        try:
            await self.notifier.push(self.bot, job.chat_id, job.user_id, state, data)
        except TelegramAPIError as exc:
            log.warning("job %s: could not show %s: %s", job.id, state, exc)

    async def _progress(self, job: JobRecord, key: str, *, first: bool) -> None:
        """One message per job, edited as it moves: the user never waits in silence.
        An ending (`first` False) edits it only: a job finished before any progress
        was shown needs none, its result says it all."""
        if job.progress_message_id is None and not first:
            return
        elapsed = int((self.clock() - job.created_at).total_seconds())
        text = self.notifier.text(key, job.locale).format(model=job_title(job), seconds=elapsed)
        try:
            if job.progress_message_id is None:
                sent = await self.bot.send_message(job.chat_id, text)
                await self.jobs.update(job.id, progress_message_id=sent.message_id)
            else:
                await self.bot.edit_message_text(
                    text, chat_id=job.chat_id, message_id=job.progress_message_id
                )
        except TelegramAPIError as exc:
            log.info("job %s: progress not shown: %s", job.id, exc)
