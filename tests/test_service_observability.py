"""What operators see, over the real stack: metrics on /metrics, correlation ids on every
log line of an update and of a job (the KIE call and its callback included), and no
secret in any log line.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from aiogram.types import Update
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from engine.registry import Context, Outcome
from flows.generation.settings import GenerationSettings
from kie.fake_script import Behaviour
from kie.fake_server import FakeKie
from storage.db import create_engine
from storage.settings import DatabaseSettings
from tests.harness import SECRET, Stack, running_stack
from tests.service_support import captured_logs, mini_flow, sample
from tests.test_generation_e2e import RICH, final_job, fund, order, until
from trt.observability.context import scope
from trt.observability.endpoint import add_metrics_route
from trt.observability.logs import REDACTED, configure_logging
from trt.observability.updates import UpdateObserver
from trt.settings import Settings, secret_values

CALLBACK_ROUTE = "/kie/callback/{job_id}/{secret}"


async def scrape(stack: Stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with stack.http.get(stack.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = await resp.text()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


async def test_metrics_cover_updates_callbacks_jobs_kie_money_and_the_pool(tmp_path: Path) -> None:
    async with FakeKie(default=Behaviour(run_s=0.05)) as kie:
        async with running_stack(kie=kie) as stack:
            unanswered = sample("trt_callbacks_unanswered_total")
            await fund(stack, 41, RICH)
            chat = stack.chat(41)
            await order(chat, "text_to_image")
            await chat.tap("✅ Создать")
            await final_job(stack, 41)
            found = await scrape(stack)
    assert value(found, "trt_updates_total", type="callback_query", outcome="ok") >= 3
    assert value(found, "trt_updates_total", type="message", outcome="ok") >= 2
    assert value(found, "trt_update_handling_seconds_count", type="callback_query") >= 3
    assert value(found, "trt_callback_answer_seconds_count") >= 3
    assert sample("trt_callbacks_unanswered_total") == unanswered
    assert value(found, "trt_http_requests_total", route="/telegram/webhook", status="200") >= 5
    assert value(found, "trt_http_requests_total", route=CALLBACK_ROUTE, status="200") >= 1
    assert value(found, "trt_telegram_request_seconds_count", method="answerCallbackQuery") >= 3
    for state in ("created", "held", "submitting", "submitted", "succeeded", "charged"):
        assert value(found, "trt_job_transitions_total", state=state) >= 1, state
    assert value(found, "trt_kie_request_seconds_count", operation="create_task") >= 1
    assert value(found, "trt_kie_request_seconds_count", operation="record_info") >= 1
    assert value(found, "trt_payments_total") == 1  # the funding top-up
    assert value(found, "trt_payments_kopecks_total") == RICH
    assert value(found, "trt_holds_pending") == 0 and value(found, "trt_holds_overdue") == 0
    assert "trt_jobs" in found and value(found, "trt_jobs", state="running") == 0
    assert value(found, "trt_db_metrics_up") == 1
    for gauge in ("trt_db_pool_size", "trt_db_pool_checked_out", "trt_db_pool_overflow"):
        assert gauge in found, gauge
    for counter in ("trt_db_pool_waits_total", "trt_db_pool_wait_seconds_total"):
        assert counter in found, counter
    assert "process_resident_memory_bytes" in found


async def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    db = create_engine(DatabaseSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db"))
    app = web.Application()
    add_metrics_route(app, db, token="metrics-token-0123456789")
    try:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/metrics")).status == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.get("/metrics", headers=wrong)).status == 401
            good = {"Authorization": "Bearer metrics-token-0123456789"}
            assert (await client.get("/metrics", headers=good)).status == 200
    finally:
        await db.dispose()


# ------------------------------------------------------------------ correlation ids


async def test_every_line_of_an_update_and_a_job_carries_its_ids() -> None:
    async with FakeKie(default=Behaviour(run_s=0.1)) as kie:
        # Polls far apart from the start (a pass already waiting would wake within the
        # harness's 0.2 s): the KIE callback, not the poller, finishes the job.
        async with running_stack(kie=kie, poll_interval_s=60) as stack:
            await fund(stack, 42, RICH)
            chat = stack.chat(42)
            await order(chat, "text_to_image")
            with captured_logs() as logs:
                await chat.tap("✅ Создать")
                job = await final_job(stack, 42)

                # The callback's request logs its line after the job it finished is final.
                async def callback_logged() -> bool:
                    return any(x["event"] == "KIE callback accepted" for x in logs.lines())

                await until(callback_logged)
    assert job.state == "charged"
    lines = logs.lines()
    [tap] = [x for x in lines if x["event"].startswith("update ")]
    assert tap["user_id"] == 42 and tap["chat_id"] == 42 and tap["state"] == "job_started"
    assert isinstance(tap["update_id"], int) and tap["outcome"] == "ok"

    mine = [x for x in lines if x.get("job_id") == job.id]
    assert all(x["user_id"] == 42 and x["chat_id"] == 42 for x in mine), mine
    events = {x["event"] for x in mine}
    assert {"job created", "KIE task created", "KIE callback accepted"} <= events, events
    # The KIE call happened in a job step spawned by the tap: it still names the tap.
    [created] = [x for x in mine if x["event"] == "KIE task created"]
    assert created["update_id"] == tap["update_id"]
    # The callback is a request of its own, yet its lines name the job and the user.
    in_callback = [x for x in mine if x.get("http_route") == CALLBACK_ROUTE]
    moved = {x["event"] for x in in_callback}
    assert {"KIE callback accepted", "job moved to succeeded", "job moved to charged"} <= moved
    assert all("update_id" not in x for x in in_callback)


def test_console_lines_in_development_show_the_ids_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(level="INFO", json_lines=False, stream=stream)
    try:
        with scope(update_id=7, user_id=8):
            logging.getLogger("trt.test").info("hello there")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    line = stream.getvalue()
    assert "hello there" in line and "update_id=7" in line and "user_id=8" in line
    assert not line.lstrip().startswith("{")


# ------------------------------------------------------------------ secrets


async def test_no_secret_reaches_the_logs(tmp_path: Path) -> None:
    token = "4242:AAHfakeButLongBotToken_0123456789"
    kie_key = "kie-secret-key-0123456789abcdef"
    secrets = secret_values(
        [
            Settings(BOT_TOKEN=token, WEBHOOK_SECRET=SECRET),
            GenerationSettings(KIE_API_KEY=kie_key),
        ]
    )
    assert {token, kie_key, SECRET} <= set(secrets)

    async def careless(ctx: Context) -> Outcome:
        logging.getLogger("careless").warning("calling KIE with %s as %s", kie_key, token)
        raise RuntimeError(f"https://api.telegram.org/bot{token}/sendMessage failed")

    async with FakeKie(api_key=kie_key) as kie:
        with captured_logs("DEBUG", secrets) as logs:
            async with running_stack(
                flow_path=mini_flow(tmp_path), kie=kie, token=token, actions={"boom": careless}
            ) as stack:
                chat = stack.chat(43)
                await chat.send("/start")
                await chat.tap("Дальше")
                await chat.tap(chat.screen().flat()[0][0])
                await chat.tap("Сломать")
                await stack.post(stack.api.make_message_update(43, 43, "/start"), "wrong")
                await stack.product.kie.credits()
    text = logs.text
    assert text.count(REDACTED) >= 3  # the careless line and the exception were caught
    for secret in (token, token.partition(":")[2], kie_key, SECRET):
        assert secret not in text


# ------------------------------------------------------------------ the watchers themselves


async def test_a_callback_left_unanswered_is_counted_and_logged() -> None:
    """The engine answers every tap, so only a broken error path could leave one; the
    counter that alerts on it must see it when it happens."""
    observer = UpdateObserver(lambda exc: False)
    update = Update.model_validate(
        {
            "update_id": 901,
            "callback_query": {
                "id": "q901",
                "from": {"id": 9, "is_bot": False, "first_name": "T"},
                "chat_instance": "9",
                "data": "x",
            },
        }
    )

    async def forgets(event: object, data: dict[str, object]) -> None:
        return None

    before = sample("trt_callbacks_unanswered_total")
    with captured_logs() as logs:
        await observer(forgets, update, {})
    assert sample("trt_callbacks_unanswered_total") == before + 1
    assert [x["event"] for x in logs.lines() if x["level"] == "error"] == [
        "callback query q901 was left unanswered"
    ]
