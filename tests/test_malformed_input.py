"""Malformed input on the two endpoints anyone can reach: a 4xx, one log line, no
traceback, nothing stored; a database outage under a KIE callback: 503, one warning.

A traceback in the log is kept for a bug of ours: input that merely is not what Telegram
or KIE sends (nested thousands deep, an id beyond 64 bits, JSON that is not an object,
bytes that are not UTF-8, too much of it) must not fill the log with them. Each test runs
over real HTTP on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from kie.fake_script import Behaviour
from kie.fake_server import FakeKie
from storage.jobs import JobRecord
from storage.processed_updates import ProcessedUpdates
from tests.harness import SECRET, Stack, running_stack
from tests.service_support import Outage
from tests.test_generation_e2e import RICH, available, events, fund, order, reach
from trt.webhook import WEBHOOK_PATH

INT64_MAX = 2**63 - 1
DEEP = 20_000
WEBHOOK_LOGGER = "trt.webhook"
CALLBACK_LOGGER = "flows.generation.callbacks"


@pytest.fixture
async def stack(migrated_database_url: str) -> AsyncIterator[Stack]:
    """A job that never finishes on its own, so a callback could still move it."""
    async with (
        FakeKie(default=Behaviour(run_s=None, polls=10**9, callback=False)) as kie,
        running_stack(kie=kie, db_url=migrated_database_url) as s,
    ):
        yield s


def deep(prefix: str, opener: str = "[", closer: str = "]", suffix: str = "") -> bytes:
    return (prefix + opener * DEEP + closer * DEEP + suffix).encode()


async def post_raw(stack: Stack, path: str, body: Any, headers: dict[str, str]) -> int:
    async with stack.http.post(stack.url + path, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """Sent without a Content-Length: the cap must hold on what arrives, not on a header."""
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


def check_refusal_logged_once(caplog: pytest.LogCaptureFixture, logger: str, case: str) -> None:
    ours = [r for r in caplog.records if r.name == logger]
    assert len(ours) == 1, (case, [r.getMessage() for r in ours])
    assert ours[0].levelno <= logging.WARNING, case
    traced = [(r.name, r.getMessage()) for r in caplog.records if r.exc_info]
    assert traced == [], (case, traced)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == [], case


def update_with_big_user_id(update_id: int) -> bytes:
    message = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": 5, "type": "private"},
        "from": {"id": 2**64, "is_bot": False, "first_name": "X"},
        "text": "/start",
    }
    return json.dumps({"update_id": update_id, "message": message}).encode()


WEBHOOK_CASES: list[tuple[str, Any, int]] = [
    ("nested lists", deep('{"update_id": 901, "message": ', suffix="}"), 400),
    ("nested objects", deep("", '{"a":', "}", "").replace(b":}", b":1}", 1), 400),
    ("nested, unclosed", b"[" * DEEP, 400),
    ("update_id 2**63", b'{"update_id": 9223372036854775808}', 400),
    ("update_id -2**63-1", b'{"update_id": -9223372036854775809}', 400),
    ("update_id 10**30", b'{"update_id": 1000000000000000000000000000000}', 400),
    ("user id 2**64", update_with_big_user_id(902), 400),
    ("a list", b'[{"update_id": 903}]', 400),
    ("an empty list", b"[]", 400),
    ("a number", b"903", 400),
    ("a string", b'"update"', 400),
    ("null", b"null", 400),
    ("invalid UTF-8", b'{"update_id": 904, "x": "\xff\xfe"}', 400),
    ("an encoded surrogate", b'{"update_id": 905, "x": "\xed\xa0\x80"}', 400),
    ("an escaped lone surrogate", b'{"update_id": 907, "x": "\\ud800"}', 400),
    ("empty", b"", 400),
    ("too large", b'{"update_id": 906, "x": "' + b"a" * (1024 * 1024) + b'"}', 413),
]


async def test_malformed_updates_are_refused_quietly_and_not_stored(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    too_large = WEBHOOK_CASES[-1][1]
    cases = [*WEBHOOK_CASES, ("too large, chunked", "chunked", 413)]
    for case, body, status in cases:
        caplog.clear()
        sent = chunked(too_large) if body == "chunked" else body
        assert await post_raw(stack, WEBHOOK_PATH, sent, headers) == status, case
        check_refusal_logged_once(caplog, WEBHOOK_LOGGER, case)

    assert stack.api.calls == []
    processed = ProcessedUpdates(stack.product.services.db)
    for update_id in range(901, 908):
        assert not await processed.seen(update_id)
    async with stack.product.services.db.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM processed_updates"))).scalar()
    assert stored == 0
    # The largest id Telegram could send is still an update.
    update = stack.api.make_message_update(5, 5, "/start")
    update["update_id"] = INT64_MAX
    assert await stack.post(update) == 200
    await stack.write_records()
    assert await processed.seen(INT64_MAX)


async def running_job(stack: Stack, user_id: int) -> JobRecord:
    await fund(stack, user_id, RICH)
    chat = stack.chat(user_id)
    await order(chat, "text_to_image")
    await chat.tap("✅ Создать")
    # Running, not merely submitted: the poller's next look would move a submitted job on.
    return await reach(stack, user_id, "running")


async def snapshot(stack: Stack, job: JobRecord) -> tuple[Any, ...]:
    """What a callback could change: the job, its history, the user's money."""
    now = await stack.jobs.get(job.id)
    assert now is not None
    money = await available(stack, now.user_id)
    return now.state, now.task_id, now.result_urls, await events(stack, job), money


async def test_malformed_kie_callbacks_are_refused_quietly_and_change_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    job = await running_job(stack, 31)
    before = await snapshot(stack, job)
    path = f"/kie/callback/{job.id}/{job.callback_secret}"
    data = f'"data": {{"taskId": "{job.task_id}", "state": "success"'
    too_large = b'{"code": 200, "x": "' + b"a" * (256 * 1024) + b'"}'
    cases: list[tuple[str, Any, int]] = [
        ("nested lists", deep('{"code": 200, "data": ', suffix="}"), 400),
        ("nested objects", deep("", '{"a":', "}", "").replace(b":}", b":1}", 1), 400),
        ("nested, unclosed", b"[" * DEEP, 400),
        ("nested inside data", deep("{" + data + ', "x": ', suffix="}}"), 400),
        (
            "an int beyond 64 bits",
            ("{" + data + ', "createTime": 1' + "0" * 30 + "}}").encode(),
            400,
        ),
        ("a list", b"[]", 400),
        ("a number", b"200", 400),
        ("a string", b'"success"', 400),
        ("null", b"null", 400),
        ("invalid UTF-8", ("{" + data + ', "x": "').encode() + b'\xff"}}', 400),
        ("an escaped lone surrogate", ("{" + data + ', "x": "\\udfff"}}').encode(), 400),
        ("empty", b"", 400),
        ("too large", too_large, 413),
        ("too large, chunked", "chunked", 413),
    ]
    caplog.set_level(logging.INFO)
    headers = {"Content-Type": "application/json"}
    for case, body, status in cases:
        caplog.clear()
        sent = chunked(too_large) if body == "chunked" else body
        assert await post_raw(stack, path, sent, headers) == status, case
        check_refusal_logged_once(caplog, CALLBACK_LOGGER, case)
    assert await snapshot(stack, job) == before


async def test_a_kie_callback_during_a_database_outage_gets_503_and_one_warning(
    request: pytest.FixtureRequest,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = (
        request.getfixturevalue("postgres_admin_url")
        if migrated_database_url.startswith("postgresql")
        else None
    )
    async with (
        FakeKie(default=Behaviour(run_s=None, polls=10**9, callback=False)) as kie,
        running_stack(kie=kie, db_url=migrated_database_url) as stack,
    ):
        job = await running_job(stack, 32)
        path = f"/kie/callback/{job.id}/{job.callback_secret}"
        body = {"code": 200, "msg": "ok", "data": {"taskId": job.task_id, "state": "generating"}}
        outage = Outage(migrated_database_url, stack.product.services.db, admin)
        caplog.set_level(logging.INFO)
        try:
            await outage.start()
            caplog.clear()
            async with stack.http.post(stack.url + path, json=body) as resp:
                assert resp.status == 503, await resp.text()
            # A step of the job meets the outage too (whether or not the poller's does).
            await stack.product.services.generation.advance(job.id)
            stepped = [(r.levelno, r.exc_info) for r in caplog.records if job.id in r.getMessage()]
            assert stepped and set(stepped) == {(logging.WARNING, None)}, stepped
            ours = [r for r in caplog.records if r.name == CALLBACK_LOGGER]
            assert [(r.levelno, r.exc_info) for r in ours] == [(logging.WARNING, None)], [
                r.getMessage() for r in ours
            ]
            # The poller may meet the outage too; that is its own line, not this request's.
            traced = [
                (r.name, r.getMessage())
                for r in caplog.records
                if r.exc_info and r.getMessage() != "poller pass failed"
            ]
            assert traced == []
        finally:
            await outage.stop()
        async with stack.http.get(stack.url + "/readyz") as resp:
            assert resp.status == 200  # the pool has met the restart and replaced its dead ones
        # KIE's retry, once the database is back.
        async with stack.http.post(stack.url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
