"""A generation from the confirm tap to a charged or released hold.

    created -> held -> submitting -> submitted -> running -> succeeded -> delivered -> charged
                 \\          \\            \\          \\
                  `----------`------------`----------`--> failed -> released

Every step is a compare-and-set on the job row (storage.jobs), so the callback,
the poller and recovery can all try to move a job and exactly one does. Money
follows MONEY.md: the hold is placed before KIE is asked, posted only after the
result reached the user, voided on failure; all ledger calls use ids derived
from the job, so a step retried after a crash never moves money twice.

A createTask that may have reached KIE is never sent again (S11): the job
waits in `submitting` for a callback that names its task (the callback URL
carries the job id), and is released at its deadline if none comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from flows.generation.delivery import deliver_result
from flows.generation.lifecycle import ACTIVE, LIFECYCLE, UNFINISHED, S
from flows.generation.notices import JobNotices
from flows.generation.ports import Jobs, Kie, NoHooks, StepHooks
from flows.generation.request import GenerationRequest
from flows.generation.safe_fetch import ResultFetcher
from flows.generation.settings import GenerationSettings
from flows.job_words import job_title
from kie.errors import CreateOutcomeUnknown, KieError, NotFound
from kie.task import TaskInfo
from storage.errors import is_unavailable
from storage.jobs import JobRecord
from storage.ledger import HoldExpired, HoldNotPending, InsufficientFunds, Ledger, UnknownHold
from storage.users import ensure_user

log = logging.getLogger(__name__)

# How long the poller leaves a job to the step that is moving it before stepping in.
GRACE = timedelta(seconds=60)
# Sending a result may use this much of the delivery lease; a sender still busy then
# stops, and the job waits for its lease to run out before another sender takes over.
SENDING_SHARE_OF_LEASE = 0.8


# What a tap on Generate came to; "rejected": an earlier delivery's job was refused.
StartOutcome = Literal["started", "rejected", "insufficient_funds", "free_limit"]


@dataclass(frozen=True, slots=True)
class Started:
    outcome: StartOutcome
    job: JobRecord


# Attempts to store a task id through a database outage: about three minutes.
ACCEPT_ATTEMPTS = 40


class GenerationService:
    def __init__(
        self,
        *,
        jobs: Jobs,
        ledger: Ledger,
        kie: Kie,
        bot: Bot,
        notices: JobNotices,
        settings: GenerationSettings,
        hooks: StepHooks | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`notices` puts what happens into words for the user; `hooks` watch each step
        and callback (trt.observability.jobs binds the job's ids to the log there)."""
        self.jobs = jobs
        self.ledger = ledger
        self.kie = kie
        self.bot = bot
        self.notices = notices
        self.settings = settings
        self.hooks = hooks or NoHooks()
        self.clock = clock or (lambda: datetime.now(UTC))
        # Downloads results Telegram refuses by URL: public addresses and RESULT_FETCH_ALLOW.
        self.fetcher = ResultFetcher(settings.fetch_policy)
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ start

    async def start(
        self, *, key: str, user_id: int, chat_id: int, locale: str, request: GenerationRequest
    ) -> Started:
        """Creates the job for `key` once (S1, S2), holds its price, and starts it."""
        account = await ensure_user(self.ledger.engine, user_id, language=locale)
        now = self.clock()
        # From the tap's run key, like every effect's key: a redelivered tap names the same
        # job (and hold) whichever delivery writes it first.
        job_id = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        job, created = await self.jobs.create(
            id=job_id,
            # Known before the hold, so recovery can void a hold a crash left behind (S4).
            hold_id=f"job:{job_id}" if request.price else None,
            key=key[:64],
            user_id=user_id,
            chat_id=chat_id,
            locale=locale,
            model_id=request.model_id,
            kie_model=request.kie_model,
            kind=request.kind,
            request={"input": request.input, "title": request.title, "data": request.data},
            price=request.price,
            # A secret, not a key: it must be unguessable, so it is random.
            callback_secret=secrets.token_urlsafe(24),
            deadline_at=now + self.settings.job_timeout,
            # Recovery leaves a young job to the tap that is starting it.
            next_check_at=now + GRACE,
        )
        if not created and job.state != S.CREATED:
            return Started("rejected" if job.state == S.REJECTED else "started", job)
        # A job found still `created` is this tap's own, cut off before its hold by an
        # outage: its redelivery goes on from there (the hold is keyed by the job, so a
        # second delivery racing this one holds once, and one of them moves it on).
        refusal = await self._hold(job, account)
        if refusal is not None:
            rejected = await self._move(job, "reject", detail=refusal)
            return Started(refusal, rejected or job)
        held = await self._move(job, "hold", next_check_at=now + GRACE)
        if held is None:
            # Another delivery, or recovery, moved it meanwhile: let the job's own state
            # decide (a job recovery failed releases this hold).
            self.spawn(self.advance(job.id))
            return Started("started", job)
        self.spawn(self.advance(held.id))
        return Started("started", held)

    async def _hold(
        self, job: JobRecord, account: int
    ) -> Literal["insufficient_funds", "free_limit"] | None:
        """None when the job may go on; else why not."""
        if job.price == 0:
            since = self.clock() - timedelta(days=1)
            used = await self.jobs.count_free_since(job.user_id, since)
            # This job already counts itself.
            return "free_limit" if used > self.settings.free_daily_limit else None
        try:
            assert job.hold_id is not None
            await self.ledger.hold(
                job.hold_id,
                account,
                job.price,
                expires_in=self.settings.hold_timeout,
                reason="generation",
                note=job_title(job)[:200],
            )
        except InsufficientFunds:
            return "insufficient_funds"
        return None

    # ------------------------------------------------------------ driving

    def spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Waits for in-flight steps (graceful shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def advance(self, job_id: str) -> None:
        """Takes the job as far as it can go now; safe to call any number of times."""
        with self.hooks.step(job_id):
            try:
                await self._advance(job_id)
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("job %s: step failed; the poller will retry", job_id)
                else:  # as for a pass: an outage is one line, not a traceback
                    log.warning(
                        "job %s: step skipped, database unavailable (%s); the poller will retry",
                        job_id,
                        type(exc).__name__,
                    )

    async def _advance(self, job_id: str) -> None:
        job = await self.jobs.get(job_id)
        if job is None or job.final:
            return
        if job.state == S.CREATED:
            await self._fail(job, "interrupted before it started")  # S4
        elif job.state in (S.HELD, S.SUBMITTING, *ACTIVE) and self.clock() >= job.deadline_at:
            await self._fail(job, "timeout")
        elif job.state == S.HELD:
            await self._submit(job)  # S4: a crash came between the hold and KIE
        elif job.state in (S.SUCCEEDED, S.DELIVERING):
            await self._deliver(job)  # S6; a delivering job is due only once its lease ran out
        elif job.state == S.DELIVERED:
            await self._charge(job)  # S5
        elif job.state == S.FAILED:
            await self._release(job)
        elif job.task_id is not None:
            await self._check(job)
        else:  # submitting with no task id: only a callback can tell; look again at the deadline
            await self.jobs.update(job.id, next_check_at=job.deadline_at)

    async def _submit(self, job: JobRecord) -> None:
        sending = await self._move(job, "submit")
        if sending is None:
            return
        try:
            task_id = await self.kie.create_task(
                job.kie_model, job.request["input"], self._callback_url(job)
            )
        except CreateOutcomeUnknown as exc:
            # It may have reached KIE: wait for its callback, never create a second task.
            await self.jobs.update(job.id, next_check_at=job.deadline_at)
            log.warning("job %s: create outcome unknown (%s); waiting for a callback", job.id, exc)
            return
        except KieError as exc:
            await self._fail(sending, f"create refused: {exc}")
            return
        submitted = await self._accept(sending, task_id)
        if submitted is not None:
            await self.notices.progress(submitted)

    async def _accept(self, sending: JobRecord, task_id: str) -> JobRecord | None:
        """Stores the task id KIE answered. Only this process knows it (KIE's callback,
        the other way to learn it, may never come), so a database outage is waited out
        here, up to the job's deadline, instead of leaving the task unknown."""
        pause = 0.25
        for attempt in range(ACCEPT_ATTEMPTS):
            try:
                accepted = await self._move(
                    sending,
                    "accept",
                    task_id=task_id,
                    next_check_at=self.clock() + timedelta(seconds=self.settings.poll_interval_s),
                )
            except Exception as exc:
                last = attempt + 1 == ACCEPT_ATTEMPTS or self.clock() >= sending.deadline_at
                if last or not is_unavailable(exc):
                    raise
                log.warning("job %s: task %s not stored yet (%r)", sending.id, task_id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if accepted is None:  # an earlier attempt committed before its connection died
                found = await self.jobs.get(sending.id)
                return found if found is not None and found.task_id == task_id else None
            return accepted
        return None

    def _callback_url(self, job: JobRecord) -> str | None:
        base = self.settings.public_base_url
        if not base:
            return None
        return f"{base.rstrip('/')}/kie/callback/{job.id}/{job.callback_secret}"

    async def _check(self, job: JobRecord) -> None:
        """Asks KIE (recordInfo is the authority) and applies what it says."""
        assert job.task_id is not None
        try:
            info = await self.kie.record_info(job.task_id)
        except NotFound:
            await self._fail(job, "KIE does not know the task")
            return
        except KieError as exc:
            log.warning("job %s: recordInfo failed: %s", job.id, exc)
            await self._later(job)
            return
        await self.apply(job, info)

    async def apply(self, job: JobRecord, info: TaskInfo) -> None:
        if info.succeeded:
            if not info.result_urls:
                await self._fail(job, "KIE reported success without a result")
                return
            done = await self._move(
                job,
                "succeed",
                task_id=info.task_id,
                result_urls=list(info.result_urls),
                next_check_at=self.clock() + GRACE,
            )
            if done is not None:
                await self._deliver(done)
        elif info.failed:
            reason = f"KIE failed: {info.fail_code or ''} {info.fail_msg or ''}".strip()
            await self._fail(job, reason)
        else:
            if job.state == S.SUBMITTED:
                running = await self._move(job, "progress")
                job = running or job
            await self._later(job)
            await self.notices.progress(job)

    async def _later(self, job: JobRecord) -> None:
        """Schedules the next poll with back-off; callbacks usually arrive first."""
        delay = min(
            self.settings.poll_max_interval_s,
            self.settings.poll_interval_s * 1.5 ** min(job.polls, 20),
        )
        await self.jobs.update(
            job.id,
            polls=job.polls + 1,
            next_check_at=min(job.deadline_at, self.clock() + timedelta(seconds=delay)),
        )

    # ------------------------------------------------------------ the end of a job

    async def _deliver(self, job: JobRecord) -> None:
        """Claims delivery, sends the result, then charges (S6: a sender that died leaves
        its lease to expire and the next one sends again; it never charges twice).

        The claim comes before the side effect, so at most one sender exists at a time:
        a second step (a callback racing the poller, another process) finds the job
        `delivering` under a lease and stands back. The sending is bounded well inside
        the lease, so a slow sender stops before anyone may take over."""
        lease = timedelta(seconds=self.settings.delivery_lease_s)
        trigger = "reclaim_delivery" if job.state == S.DELIVERING else "claim_delivery"
        claimed = await self._move(job, trigger, next_check_at=self.clock() + lease)
        if claimed is None:
            return
        words = self.notices.result_words(job)
        try:
            async with asyncio.timeout(lease.total_seconds() * SENDING_SHARE_OF_LEASE):
                await deliver_result(
                    self.bot,
                    job.chat_id,
                    job.kind,
                    job.result_urls,
                    words.caption,
                    words.link,
                    fetcher=self.fetcher,
                )
        except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter) as exc:
            # Telegram out of reach for now: not delivered (or not all of it). The lease
            # is given back early, so the next pass sends it again soon; never sold unseen.
            retry_at = self.clock() + timedelta(seconds=self.settings.poll_interval_s)
            await self.jobs.update(job.id, next_check_at=retry_at)
            log.warning("job %s: delivery not done, Telegram unavailable: %s", job.id, exc)
            return
        except TelegramAPIError as exc:
            # The user blocked the bot or the chat is gone: the result exists, so it is sold.
            log.warning("job %s: delivery failed for good: %s", job.id, exc)
        delivered = await self._move(claimed, "deliver", next_check_at=self.clock() + GRACE)
        if delivered is None:
            return
        await self.notices.delivered(delivered)
        await self._charge(delivered)

    async def _charge(self, job: JobRecord) -> None:
        if job.hold_id is None:
            await self._move(job, "charge", detail="free")
            return
        try:
            await self.ledger.post(f"post:{job.id}", job.hold_id)
        except (HoldExpired, HoldNotPending) as exc:
            # S8: the hold ran out before delivery; record the loss, never charge late.
            await self._move(job, "lose", detail=str(exc))
            log.error("job %s: delivered but not charged: %s", job.id, exc)
            return
        await self._move(job, "charge")

    async def _fail(self, job: JobRecord, reason: str) -> None:
        failed = await self._move(
            job,
            "fail",
            detail=reason,
            error=reason[:300],
            next_check_at=self.clock() + GRACE,
        )
        if failed is not None:
            log.info("job %s failed: %s", job.id, reason)
            await self._release(failed)

    async def _release(self, job: JobRecord) -> None:
        if job.hold_id is not None:
            # Expired: released all the same. Unknown: the crash came before the hold.
            with contextlib.suppress(HoldNotPending, UnknownHold):
                await self.ledger.void(f"void:{job.id}", job.hold_id)
        released = await self._move(job, "release")
        if released is not None:
            await self.notices.released(released)

    async def _move(
        self, job: JobRecord, trigger: str, *, detail: str | None = None, **changes: Any
    ) -> JobRecord | None:
        """A move of the job lifecycle (flows.generation.lifecycle) by name: None when the
        table does not allow it from the job's state, its guard is false, or another step
        moved the job first (the compare-and-set in the store decides)."""
        move = LIFECYCLE.plan(job, trigger, self.clock(), changes)
        if move is None:
            return None
        return await self.jobs.move(
            job.id, move.sources, move.dest, detail=detail, due_by=move.due_by, **changes
        )

    # ------------------------------------------------------------ callbacks, poller, recovery

    async def on_callback(self, job_id: str, secret: str, info: TaskInfo) -> bool:
        """A KIE callback; False (and nothing changed) unless it is for this job (S10)."""
        with self.hooks.callback(job_id):
            accepted = await self._on_callback(job_id, secret, info)
            self.hooks.callback_handled(job_id, info.task_id, accepted)
            return accepted

    async def _on_callback(self, job_id: str, secret: str, info: TaskInfo) -> bool:
        job = await self.jobs.get(job_id)
        if job is None or not hmac.compare_digest(job.callback_secret, secret):
            return False
        if job.task_id is not None and job.task_id != info.task_id:
            return False
        if job.final or job.state not in (S.SUBMITTING, *ACTIVE):
            return True  # a duplicate after the fact: acknowledged, nothing to do
        try:
            confirmed = await self.kie.record_info(info.task_id)
        except KieError as exc:
            log.warning("job %s: callback not confirmed yet: %s", job.id, exc)
            return True  # the poller will look again
        if job.task_id is None:
            learned = await self._move(job, "accept", task_id=confirmed.task_id)
            job = learned or job
        await self.apply(job, confirmed)
        return True

    async def check_due(self) -> int:
        """One poller pass: every unfinished job whose time has come takes a step."""
        due = await self.jobs.due(UNFINISHED)
        for job in due:
            await self.advance(job.id)
        return len(due)

    async def run(self, stop: asyncio.Event) -> None:
        """The poller and sweeper loop, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.check_due()
                await self.ledger.expire_due()
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("poller pass failed")
                else:  # an outage is not a bug: one line, and the next pass tries again
                    log.warning("poller pass skipped, database unavailable: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
