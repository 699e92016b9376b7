"""Generations through the real stack: taps on our webhook, the fake Telegram, the real KIE
client against the fake KIE over HTTP, the real ledger on a real database.

Each test checks what the user sees and what the money did: the balance moves by
exactly the price shown on the confirm screen, only after delivery, and never
twice; on any failure nothing is charged (MONEY.md S1, S2, S4-S6, S8, S10, S11).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

import flows.generation.service as service_module
from engine.loader import load_flow
from engine.local.bot_api_server import Call
from flows.generation.settings import GenerationSettings
from kie.fake_script import Behaviour
from kie.fake_server import FakeKie
from pricing.catalog import load_catalog
from storage.jobs import JobRecord
from storage.ledger import Ledger
from tests.harness import ROOT, Chat, Stack, answer_text, running_stack
from tests.ledger_support import check_invariants

RU = load_flow(ROOT / "flows.yaml").spec
CATALOG = load_catalog()
KIND_BUTTONS = {
    "free": "🆓 Бесплатные модели",
    "text_to_image": "🖼 Текст → фото",
    "image_to_image": "🎨 Фото → фото",
    "text_to_video": "🎬 Текст → видео",
    "image_to_video": "📽 Фото → видео",
    "image_edit": "✏️ Редактор изображений",
    "audio": "🎵 Аудио",
}
MEDIA_METHOD = {
    "free": "sendPhoto",
    "text_to_image": "sendPhoto",
    "image_to_image": "sendPhoto",
    "image_edit": "sendPhoto",
    "text_to_video": "sendVideo",
    "image_to_video": "sendVideo",
    "audio": "sendAudio",
}
RICH = 100_000_00  # kopecks: enough for anything in the catalog
FAST = Behaviour(run_s=0.05)


def settings_for(stack_url: str, kie: FakeKie, **extra: Any) -> GenerationSettings:
    values: dict[str, Any] = {
        "KIE_API_KEY": kie.api_key,
        "KIE_BASE_URL": kie.base_url,
        "PUBLIC_BASE_URL": stack_url,
        "POLL_INTERVAL_S": 0.1,
    }
    values.update(extra)
    return GenerationSettings(**values)


@pytest.fixture
async def kie() -> AsyncIterator[FakeKie]:
    async with FakeKie(default=FAST) as fake:
        yield fake


@pytest.fixture
async def stack(kie: FakeKie, migrated_database_url: str) -> AsyncIterator[Stack]:
    """On SQLite and on PostgreSQL."""
    async with running_stack(kie=kie, db_url=migrated_database_url) as s:
        yield s


# ------------------------------------------------------------------ helpers


async def fund(stack: Stack, user_id: int, kopecks: int) -> None:
    services = stack.product.services
    account = await services.account(user_id, "ru")
    await services.ledger.credit(f"fund-{user_id}", account, kopecks, source="topups", reason="t")


async def available(stack: Stack, user_id: int) -> int:
    services = stack.product.services
    return (await services.ledger.balance(await services.account(user_id, "ru"))).available


def shown_price(chat: Chat) -> int:
    """The price on the confirm screen (Russian: a decimal comma), in kopecks (0 for free)."""
    found = re.search(r"Цена: (.+)", chat.screen().text)
    assert found is not None, chat.screen().text
    if found.group(1).startswith(RU.texts["price_free"]["ru"]):
        return 0
    rub, _, kop = found.group(1).removesuffix(" ₽").partition(",")
    return int(rub) * 100 + int(kop or 0)


def model_for(kind: str) -> str:
    """The menu label of the kind's first model: a free one under "free", else a paid one."""
    models = CATALOG.by_kind(kind)
    model = next(m for m in models if m.free == (kind == "free"))
    return model.title["ru"]


async def order(chat: Chat, kind: str) -> int:
    """Main menu to the confirm screen of the kind's model; returns the shown price."""
    await chat.send("/start")
    await chat.tap(KIND_BUTTONS[kind])
    await chat.tap(model_for(kind))
    await chat.tap("▶️ Начать")
    if chat.screen().text.startswith(RU.states["image"].text["ru"][:10]):
        await chat.post(chat.api.make_photo_update(chat.chat_id, chat.chat_id))
    await chat.send("a red fox in the snow")
    assert chat.screen().text.startswith("Проверьте заказ"), chat.screen().text
    return shown_price(chat)


async def confirm_update(stack: Stack, user_id: int) -> tuple[dict[str, Any], int]:
    """A funded user's order up to the confirm screen, and the update of its Generate
    tap (to deliver as often as a test needs); the shown price."""
    await fund(stack, user_id, RICH)
    chat = stack.chat(user_id)
    price = await order(chat, "text_to_image")
    assert chat.screen_message is not None
    data = chat.screen().data_of("✅ Создать")
    update = stack.api.make_callback_update(
        user_id, user_id, chat.screen_message, data, language_code="ru"
    )
    return update, price


async def job_of(stack: Stack, user_id: int) -> JobRecord:
    jobs = await stack.jobs.recent(user_id, 5)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 10) -> None:
    """Polls the database-backed condition; jobs move on other tasks, not on an event."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def reach(stack: Stack, user_id: int, *states: str) -> JobRecord:
    """The user's only job, once it is in one of `states`."""

    async def there() -> bool:
        jobs = await stack.jobs.recent(user_id, 5)
        return bool(jobs) and jobs[0].state in states

    await until(there)
    return await job_of(stack, user_id)


async def final_job(stack: Stack, user_id: int) -> JobRecord:
    async def done() -> bool:
        jobs = await stack.jobs.recent(user_id, 5)
        return bool(jobs) and jobs[0].final

    await until(done)
    await stack.product.generation.drain()
    return await job_of(stack, user_id)


def calls_to(stack: Stack, chat_id: int, method: str) -> list[Call]:
    return [
        c
        for c in stack.api.calls_of(method)
        if int(c.params.get("chat_id", 0)) == chat_id and not c.failed
    ]


async def events(stack: Stack, job: JobRecord) -> list[str]:
    return await stack.jobs.events(job.id)


async def make_due(stack: Stack) -> None:
    """As if the grace time passed: recovery may now step in."""
    async with stack.product.services.db.begin() as conn:
        await conn.execute(
            text("UPDATE jobs SET next_check_at = :t"), {"t": datetime.now(UTC) - timedelta(1)}
        )


# ------------------------------------------------------------------ the happy paths


@pytest.mark.parametrize("kind", list(KIND_BUTTONS))
async def test_each_kind_from_menu_to_delivered_and_charged(stack: Stack, kind: str) -> None:
    user = 100 + list(KIND_BUTTONS).index(kind)
    await fund(stack, user, RICH)
    chat = stack.chat(user)
    price = await order(chat, kind)
    assert (price == 0) == (kind == "free")

    calls = await chat.tap("✅ Создать")
    assert answer_text(calls) is None
    assert chat.screen().text == RU.states["job_started"].text["ru"]

    job = await final_job(stack, user)
    assert job.state == "charged", await events(stack, job)
    assert await events(stack, job) == [
        "created",
        "held",
        "submitting",
        "submitted",
        *(["running"] if "running" in await events(stack, job) else []),
        "succeeded",
        "delivering",
        "delivered",
        "charged",
    ]
    assert job.price == price
    assert await available(stack, user) == RICH - price
    media = calls_to(stack, user, MEDIA_METHOD[kind])
    assert len(media) == 1 and media[0].params[MEDIA_METHOD[kind].removeprefix("send").lower()]
    assert chat.screen().text.startswith("✅ Готово:")
    assert len(stack.kie.tasks) == 1
    await check_invariants(stack.product.services.db)


async def test_the_result_screen_offers_again_and_it_makes_a_second_job(stack: Stack) -> None:
    await fund(stack, 7, RICH)
    chat = stack.chat(7)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    await final_job(stack, 7)
    await chat.tap("🔁 Ещё раз")
    assert shown_price(chat) == price
    await chat.tap("✅ Создать")

    async def two_charged() -> bool:
        jobs = await stack.jobs.recent(7, 5)
        return len(jobs) == 2 and all(j.state == "charged" for j in jobs)

    await until(two_charged)
    assert await available(stack, 7) == RICH - 2 * price


async def test_history_lists_the_job_and_sends_the_result_again(stack: Stack) -> None:
    await fund(stack, 8, RICH)
    chat = stack.chat(8)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 8)
    await chat.send("/start")
    await chat.tap("🗂 История")
    assert str(job.request["title"]) in chat.screen().text
    before = len(calls_to(stack, 8, "sendPhoto"))
    await chat.tap(next(label for label, _ in chat.screen().flat() if label.startswith("📥")))
    assert len(calls_to(stack, 8, "sendPhoto")) == before + 1
    assert await available(stack, 8) == RICH - job.price  # a resend costs nothing


# ------------------------------------------------------------------ refusals and failures


async def test_insufficient_balance_offers_a_top_up_and_holds_nothing(stack: Stack) -> None:
    chat = stack.chat(9)
    price = await order(chat, "text_to_image")
    assert price > 0
    assert "Баланс: 0 ₽" in chat.screen().text  # the confirm screen shows what they have
    await chat.tap("✅ Создать")
    assert chat.screen().text == RU.states["insufficient_funds"].text["ru"]
    assert "💳 Пополнить" in [label for label, _ in chat.screen().flat()]
    async with stack.product.services.db.connect() as conn:
        states = (await conn.execute(text("SELECT state FROM jobs WHERE user_id = 9"))).all()
    assert [tuple(row) for row in states] == [("rejected",)]
    assert stack.kie.tasks == {}
    assert await available(stack, 9) == 0
    # Top up opens the packages, and Back from there returns to the order.
    await chat.tap("💳 Пополнить")
    assert chat.screen().text == RU.states["order_topup"].text["ru"]
    assert "150 ₽ за 100 ⭐" in [label for label, _ in chat.screen().flat()]
    await chat.tap("« Назад")
    assert chat.screen().text.startswith("Проверьте заказ")


async def test_kie_failure_releases_the_hold_and_says_so(stack: Stack) -> None:
    stack.kie.script(Behaviour(run_s=0.05, fail_code="500", fail_msg="boom"))
    await fund(stack, 10, RICH)
    chat = stack.chat(10)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 10)
    assert job.state == "released"
    assert await events(stack, job) == [
        "created",
        "held",
        "submitting",
        "submitted",
        *(["running"] if "running" in await events(stack, job) else []),
        "failed",
        "released",
    ]
    assert await available(stack, 10) == RICH
    hold = await stack.product.services.ledger.get_hold(str(job.hold_id))
    assert hold.state == "voided"

    async def told() -> bool:  # the poller's step may still be sending the notice
        return chat.screen().text.startswith("❌ Не получилось")

    await until(told, within_s=5)
    assert RU.texts["job_failed_reason"]["ru"] in chat.screen().text


async def test_kie_refusing_the_create_releases_the_hold(stack: Stack) -> None:
    stack.kie.script(Behaviour(create_code=422))
    await fund(stack, 11, RICH)
    chat = stack.chat(11)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 11)
    assert job.state == "released" and "create refused" in str(job.error)
    assert await available(stack, 11) == RICH


async def test_a_job_that_never_finishes_times_out_and_releases(kie: FakeKie) -> None:
    async with running_stack(kie=kie) as stack:
        stack.product.generation.settings.job_timeout_s = 0.5
        kie.script(Behaviour(run_s=None, polls=10**9, callback=False))
        await fund(stack, 12, RICH)
        chat = stack.chat(12)
        await order(chat, "text_to_image")
        await chat.tap("✅ Создать")
        job = await final_job(stack, 12)
        assert job.state == "released" and job.error == "timeout"
        assert await available(stack, 12) == RICH

        async def told() -> bool:  # the notice follows the release, on its own task
            return RU.texts["job_timeout"]["ru"] in chat.screen().text

        await until(told, within_s=5)


# ------------------------------------------------------------------ duplicates and forgeries


async def test_double_tap_on_confirm_makes_one_job_and_one_hold(stack: Stack) -> None:
    await fund(stack, 13, RICH)
    chat = stack.chat(13)
    price = await order(chat, "text_to_image")
    data = chat.screen().data_of("✅ Создать")
    results = await asyncio.gather(chat.tap_data(data), chat.tap_data(data))
    notices = sorted(str(answer_text(calls, qid)) for calls, qid in results)
    assert notices == sorted(["None", RU.system.stale["ru"]])
    job = await final_job(stack, 13)
    assert job.state == "charged"
    assert len(stack.kie.tasks) == 1
    assert await available(stack, 13) == RICH - price


async def test_the_same_update_twice_makes_one_job(stack: Stack) -> None:
    update, price = await confirm_update(stack, 14)
    statuses = await asyncio.gather(stack.post(update), stack.post(update))
    assert statuses == [200, 200]
    await final_job(stack, 14)
    assert len(stack.kie.tasks) == 1
    assert await available(stack, 14) == RICH - price


async def test_duplicate_callbacks_charge_once(stack: Stack) -> None:
    stack.kie.script(Behaviour(run_s=0.05, callback_copies=4, callback_parallel=True))
    await fund(stack, 15, RICH)
    chat = stack.chat(15)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 15)
    await stack.kie.wait_for_callbacks(str(job.task_id), 4)
    await stack.product.generation.drain()
    assert (await events(stack, job)).count("charged") == 1
    assert len(calls_to(stack, 15, "sendPhoto")) == 1
    assert await available(stack, 15) == RICH - price
    assert all(c.status == 200 for c in stack.kie.callbacks_for(str(job.task_id)))


async def test_forged_callbacks_change_nothing(stack: Stack) -> None:
    stack.kie.script(Behaviour(run_s=None, polls=10**9, callback=False))
    await fund(stack, 16, RICH)
    chat = stack.chat(16)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")

    job = await reach(stack, 16, "submitted", "running")
    body = {"code": 200, "msg": "ok", "data": {"taskId": job.task_id, "state": "success"}}
    body["data"]["resultJson"] = '{"resultUrls": ["https://evil.example/x.png"]}'
    forged = [
        (f"/kie/callback/{job.id}/wrong-secret", body, 404),
        (f"/kie/callback/nope/{job.callback_secret}", body, 404),
        (
            f"/kie/callback/{job.id}/{job.callback_secret}",
            {**body, "data": {**body["data"], "taskId": "someone-elses"}},
            404,
        ),
        (f"/kie/callback/{job.id}/{job.callback_secret}", {"not": "kie"}, 400),
    ]
    for path, payload, status in forged:
        async with stack.http.post(stack.url + path, json=payload) as resp:
            assert resp.status == status, (path, await resp.text())
    # The right URL with a lie in the body: recordInfo, the authority, says still running.
    async with stack.http.post(
        stack.url + f"/kie/callback/{job.id}/{job.callback_secret}", json=body
    ) as resp:
        assert resp.status == 200
    await stack.product.generation.drain()
    after = await job_of(stack, 16)
    assert after.state in ("submitted", "running") and after.result_urls == []
    assert calls_to(stack, 16, "sendPhoto") == []
    assert await available(stack, 16) == RICH - job.price  # held, not charged


async def test_signed_callbacks_need_a_valid_signature(kie: FakeKie) -> None:
    kie.hmac_key = "kie-hmac"
    async with running_stack(kie=kie) as stack:
        stack.product.generation.settings.kie_callback_hmac_key = "kie-hmac"
        await fund(stack, 17, RICH)
        chat = stack.chat(17)
        price = await order(chat, "text_to_image")
        await chat.tap("✅ Создать")
        job = await final_job(stack, 17)
        assert job.state == "charged"
        assert await available(stack, 17) == RICH - price
        url = stack.url + f"/kie/callback/{job.id}/{job.callback_secret}"
        body = {"code": 200, "msg": "ok", "data": {"taskId": job.task_id, "state": "success"}}
        async with stack.http.post(url, json=body) as resp:
            assert resp.status == 401


async def test_a_lost_callback_is_made_up_for_by_the_poller(stack: Stack) -> None:
    stack.kie.script(Behaviour(run_s=None, polls=3, callback=False))
    await fund(stack, 18, RICH)
    chat = stack.chat(18)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 18)
    assert job.state == "charged"
    assert stack.kie.callbacks_for(str(job.task_id)) == []
    assert len(stack.kie.requests_of("recordInfo")) >= 3
    assert await available(stack, 18) == RICH - price


async def test_a_create_that_timed_out_is_never_repeated(kie: FakeKie) -> None:
    """S11: the create reached KIE but its answer did not reach us; the callback, which
    names the job in its URL, tells us the task; there is exactly one task."""
    async with running_stack(kie=kie, kie_timeout_s=0.3) as stack:
        kie.script(Behaviour(create_delay_s=1.0, run_s=0.05))
        await fund(stack, 19, RICH)
        chat = stack.chat(19)
        price = await order(chat, "text_to_image")
        await chat.tap("✅ Создать")
        job = await final_job(stack, 19)
        assert job.state == "charged"
        assert len(kie.tasks) == 1 and job.task_id in kie.tasks
        assert await available(stack, 19) == RICH - price


# ------------------------------------------------------------------ crashes and recovery


async def test_crash_between_hold_and_kie_is_recovered(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S4: the process died after the hold, before KIE was asked."""
    generation = stack.product.generation
    monkeypatch.setattr(generation, "spawn", lambda work: work.close())
    await fund(stack, 20, RICH)
    chat = stack.chat(20)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    assert (await job_of(stack, 20)).state == "held"
    assert stack.kie.tasks == {}
    monkeypatch.undo()
    await make_due(stack)
    await generation.check_due()
    job = await final_job(stack, 20)
    assert job.state == "charged"
    assert await available(stack, 20) == RICH - price


async def test_a_tap_cut_off_before_the_hold_is_finished_by_its_redelivery(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job row was written, then the database went away before the hold: the
    webhook refuses the update, and Telegram's redelivery must hold and start that same
    job (not find it "started" and leave it for recovery to fail)."""
    generation = stack.product.generation
    real = generation._hold

    async def outage(*args: Any, **kwargs: Any) -> str | None:
        raise ConnectionRefusedError("database went away")

    monkeypatch.setattr(generation, "_hold", outage)
    update, price = await confirm_update(stack, 27)
    assert await stack.post(update) == 503
    assert (await job_of(stack, 27)).state == "created"
    monkeypatch.setattr(generation, "_hold", real)
    assert await stack.post(update) == 200
    job = await final_job(stack, 27)
    assert job.state == "charged"
    assert len(stack.kie.tasks) == 1
    assert await available(stack, 27) == RICH - price
    assert (await events(stack, job)).count("held") == 1


async def test_a_task_id_is_stored_once_the_database_is_back(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KIE made the task and said its id; storing it met a database outage. Only this
    process knows the id (KIE's callback may never come), so it keeps trying: one task,
    served and charged, even with no callback at all."""
    stack.kie.script(Behaviour(run_s=None, polls=2, callback=False))
    jobs = stack.product.generation.jobs
    real = jobs.move
    refused: list[str] = []

    async def move(job_id: str, expected: Any, to: str, **kwargs: Any) -> JobRecord | None:
        if to == "submitted" and len(refused) < 3:
            refused.append(to)
            raise ConnectionRefusedError("database went away")
        return await real(job_id, expected, to, **kwargs)

    monkeypatch.setattr(jobs, "move", move)
    await fund(stack, 28, RICH)
    chat = stack.chat(28)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 28)
    assert refused == ["submitted"] * 3
    assert job.state == "charged" and job.task_id in stack.kie.tasks
    assert len(stack.kie.tasks) == 1
    assert await available(stack, 28) == RICH - price


async def test_crash_before_delivery_is_recovered_and_charged_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S6: the result was confirmed, then the process died before the user got it."""
    real = service_module.deliver_result

    async def crash(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("process died")

    monkeypatch.setattr(service_module, "deliver_result", crash)
    await fund(stack, 21, RICH)
    chat = stack.chat(21)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")

    await reach(stack, 21, "delivering")
    await stack.product.generation.drain()
    assert (await job_of(stack, 21)).state == "delivering"  # claimed by the dead sender
    assert await available(stack, 21) == RICH - price  # held, not charged
    monkeypatch.setattr(service_module, "deliver_result", real)
    await stack.product.generation.check_due()
    assert calls_to(stack, 21, "sendPhoto") == []  # its lease still holds: nobody sends
    await make_due(stack)  # the lease ran out
    await stack.product.generation.check_due()
    job = await final_job(stack, 21)
    assert job.state == "charged"
    assert len(calls_to(stack, 21, "sendPhoto")) == 1
    assert await available(stack, 21) == RICH - price


async def test_crash_before_the_charge_is_recovered_and_charged_once(stack: Stack) -> None:
    """S5: delivered, then the process died before the hold was posted."""
    ledger: Ledger = stack.product.services.ledger
    armed = {"post:before_key"}

    def fault(point: str) -> None:
        if point in armed:
            armed.discard(point)
            raise RuntimeError("process died")

    ledger.fault = fault
    await fund(stack, 22, RICH)
    chat = stack.chat(22)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")

    await reach(stack, 22, "delivered")
    await stack.product.generation.drain()
    assert await available(stack, 22) == RICH - price
    assert (await ledger.balance(await stack.product.services.account(22, "ru"))).pending == price
    await make_due(stack)
    await stack.product.generation.check_due()
    job = await final_job(stack, 22)
    assert job.state == "charged"
    assert await available(stack, 22) == RICH - price
    assert (await ledger.balance(await stack.product.services.account(22, "ru"))).pending == 0
    await check_invariants(stack.product.services.db)


async def test_an_expired_hold_is_never_charged_late(stack: Stack) -> None:
    """S8: the hold ran out before delivery: the user gets the result, the job is a loss."""
    stack.kie.script(Behaviour(run_s=None, polls=10**9, callback=False))
    await fund(stack, 23, RICH)
    chat = stack.chat(23)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")

    job = await reach(stack, 23, "submitted", "running")
    async with stack.product.services.db.begin() as conn:
        await conn.execute(
            text("UPDATE holds SET timeout_at = :t WHERE id = :h"),
            {"t": datetime.now(UTC) - timedelta(seconds=1), "h": job.hold_id},
        )
    # The service's own sweeper may get there first; either way the hold is expired now.
    await stack.product.services.ledger.expire_due()
    async with stack.product.services.db.connect() as conn:
        state = await conn.scalar(text("SELECT state FROM holds WHERE id = :h"), {"h": job.hold_id})
    assert state == "expired"
    stack.kie.complete(str(job.task_id))
    job = await final_job(stack, 23)
    assert job.state == "lost"
    assert len(calls_to(stack, 23, "sendPhoto")) == 1
    assert await available(stack, 23) == RICH


async def test_free_models_hold_nothing_and_have_a_daily_limit(kie: FakeKie) -> None:
    async with running_stack(kie=kie) as stack:
        stack.product.generation.settings.free_daily_limit = 1
        chat = stack.chat(24)
        assert await order(chat, "free") == 0
        await chat.tap("✅ Создать")
        job = await final_job(stack, 24)
        assert job.state == "charged" and job.hold_id is None and job.price == 0
        await order(chat, "free")
        calls = await chat.tap("✅ Создать")
        assert answer_text(calls) == RU.texts["free_limit"]["ru"]
        assert chat.screen().text.startswith("Проверьте заказ")
        assert len(kie.tasks) == 1


# ------------------------------------------------------------------ delivery


async def test_a_result_telegram_cannot_fetch_is_uploaded(stack: Stack) -> None:
    stack.api.inject_error(
        "sendPhoto", 400, "Bad Request: wrong file identifier/HTTP URL specified"
    )
    await fund(stack, 30, RICH)
    chat = stack.chat(30)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 30)
    assert job.state == "charged"
    photos = calls_to(stack, 30, "sendPhoto")
    assert len(photos) == 1 and photos[0].files, "the retry uploads the file itself"
    upload = next(iter(photos[0].files.values()))
    assert upload.data.startswith(b"\x89PNG")  # the real bytes from the fake KIE
    assert await available(stack, 30) == RICH - price


async def test_a_result_telegram_refuses_twice_arrives_as_a_link(stack: Stack) -> None:
    stack.api.inject_error("sendPhoto", 400, "Bad Request: wrong file identifier", times=2)
    await fund(stack, 31, RICH)
    chat = stack.chat(31)
    price = await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 31)
    assert job.state == "charged"
    link = t_result_link(job.result_urls[0])
    assert any(c.params.get("text") == link for c in calls_to(stack, 31, "sendMessage"))
    assert await available(stack, 31) == RICH - price


def t_result_link(url: str) -> str:
    return RU.texts["result_link"]["ru"].format(url=url)


async def test_the_progress_message_is_kept_up_to_date(stack: Stack) -> None:
    stack.kie.script(Behaviour(run_s=None, polls=3, callback=False))
    await fund(stack, 32, RICH)
    chat = stack.chat(32)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    job = await final_job(stack, 32)
    assert job.progress_message_id is not None
    first = [c for c in calls_to(stack, 32, "sendMessage") if "⏳" in str(c.params["text"])]
    assert len(first) == 1
    edits = [
        str(c.params["text"])
        for c in calls_to(stack, 32, "editMessageText")
        if int(c.params["message_id"]) == job.progress_message_id
    ]
    assert any("генерация идёт" in e for e in edits)
    assert edits[-1].startswith("✅") and "готово" in edits[-1]
