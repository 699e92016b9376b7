"""Replaces the work of one `trt` subcommand (named by LOG_TEST_PATCH, "module:function")
with code that logs secrets and a traceback, or raises (LOG_TEST_HOW=raise).

tests/test_logging_once.py runs the real `trt.cli.main()` with it in a forked `trt`
(tests/warm.py, `prepare`): everything before the work, settings and logging set-up
included, is what the subcommand does in production.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from typing import Any


def _work() -> int:
    log = logging.getLogger("trt.test")
    secrets = [os.environ[n] for n in ("BOT_TOKEN", "WEBHOOK_SECRET", "KIE_API_KEY")]
    log.warning("calling out with %s", " and ".join(secrets))
    if os.environ["LOG_TEST_HOW"] == "raise":
        raise RuntimeError("escaped with " + " and ".join(secrets))
    try:
        raise RuntimeError("refused " + " and ".join(secrets))
    except RuntimeError:
        log.exception("the call failed")
    return 0


async def _async_work(*args: Any, **kwargs: Any) -> int:
    return _work()


def _sync_work(*args: Any, **kwargs: Any) -> int:
    return _work()


def install() -> None:
    module_name, _, name = os.environ["LOG_TEST_PATCH"].partition(":")
    module = importlib.import_module(module_name)
    replaced = getattr(module, name)
    setattr(module, name, _async_work if asyncio.iscoroutinefunction(replaced) else _sync_work)
