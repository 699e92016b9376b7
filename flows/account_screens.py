"""The balance and history screens, and getting a result again.

Amounts are shown from the ledger (available and on hold); history lines come
from the jobs table. Words come from flows.yaml through `ctx.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from engine.registry import Context, Option, Outcome, Registry
from flows.job_words import job_title, status_key
from flows.text_keys import MOVEMENT_REASONS
from pricing.money import rub
from storage.job_states import JobState

if TYPE_CHECKING:  # at run time only the services need them: `trt flows check` stays light
    from flows.services import Services
    from storage.jobs import JobRecord
    from storage.ledger import StatementLine

HISTORY_LINES = 10
MOVEMENTS = 5


def _movement(ctx: Context, line: StatementLine) -> str:
    """A ledger line in plain words: "+150 ₽ top-up", "−11 ₽ generation (Flux 2)"."""
    sign = "+" if line.posted > 0 else "−"
    words = ctx.text(f"mv_{line.reason}") if line.reason in MOVEMENT_REASONS else line.reason
    note = f" ({line.note})" if line.note and line.reason == "generation" else ""
    return f"• {line.at.strftime('%d.%m')} {sign}{rub(abs(line.posted), ctx.locale)} {words}{note}"


def _history_line(ctx: Context, job: JobRecord) -> str:
    when = job.created_at.strftime("%d.%m %H:%M")
    price = ctx.text("price_free") if job.price == 0 else rub(job.price, ctx.locale)
    status = ctx.text(status_key(job.state))
    return f"• {when} — {job_title(job)}, {price}, {status}"


def register_account_screens(registry: Registry, services: Callable[[], Services]) -> None:
    @registry.data("balance_info")
    async def balance_info(ctx: Context) -> Mapping[str, object]:
        ledger = services().ledger
        account = await services().existing_account(ctx.user_id)
        if account is None:
            return {
                "balance": rub(0, ctx.locale),
                "on_hold": rub(0, ctx.locale),
                "movements": ctx.text("movements_empty"),
            }
        balance = await ledger.balance(account)
        lines = [x for x in await ledger.statement(account, limit=20) if x.posted][:MOVEMENTS]
        movements = "\n".join(_movement(ctx, line) for line in lines)
        return {
            "balance": rub(balance.available, ctx.locale),
            "on_hold": rub(balance.pending, ctx.locale),
            "movements": movements or ctx.text("movements_empty"),
        }

    @registry.data("history_info")
    async def history_info(ctx: Context) -> Mapping[str, object]:
        jobs = await services().jobs.recent(ctx.user_id, HISTORY_LINES)
        if not jobs:
            return {"history": ctx.text("history_empty")}
        return {"history": "\n".join(_history_line(ctx, job) for job in jobs)}

    @registry.options("history_jobs")
    async def history_jobs(ctx: Context) -> Sequence[Option]:
        jobs = await services().jobs.recent(ctx.user_id, HISTORY_LINES)
        return [
            Option(job.id, f"📥 {job_title(job)} · {job.created_at.strftime('%d.%m %H:%M')}")
            for job in jobs
            if job.state in (JobState.CHARGED, JobState.LOST) and job.result_urls
        ]

    @registry.action("resend")
    async def resend(ctx: Context) -> Outcome | None:
        job = await services().jobs.get(str(ctx.data.get("job")))
        if job is None or job.user_id != ctx.user_id:
            raise LookupError(f"job {ctx.data.get('job')!r} is not this user's")
        caption = ctx.text("result_caption").format(model=job_title(job))
        from flows.generation.delivery import deliver_result

        await deliver_result(
            ctx.bot,
            ctx.chat_id,
            job.kind,
            job.result_urls,
            caption,
            ctx.text("result_link"),
            fetcher=services().generation.fetcher,
        )
        return None
