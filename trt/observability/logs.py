"""Logging for the service: one pipeline for our lines and every library's.

Everything goes through the standard `logging` module (the engine, aiogram,
SQLAlchemy and the KIE client already log there), and structlog's
ProcessorFormatter renders each record: JSON lines in production for the log
collector, a readable console in development. The correlation ids bound in
`trt.observability.context` are merged into every line, whoever logged it.

Secrets are removed from the rendered line itself, after everything else, so
that a token inside a URL, an exception message or a traceback is caught too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from trt.observability.context import current_report
from trt.observability.metrics import ERRORS

REDACTED = "***"
# Shorter values would blank out ordinary words; real secrets are far longer.
MIN_SECRET_LENGTH = 6
_OURS = "_trt_handler"


class Redactor:
    """The last processor: replaces each secret, as written and as JSON escapes it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                variants.add(secret)
                variants.add(json.dumps(secret)[1:-1])
        # Longest first, so a token is replaced whole before a part of it is.
        self._secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, _logger: WrappedLogger, _method: str, rendered: Any) -> Any:
        if isinstance(rendered, str):
            for secret in self._secrets:
                rendered = rendered.replace(secret, REDACTED)
        return rendered


def secrets_of_token(token: str | None) -> list[str]:
    """A bot token and its secret half (the part after the colon, which URLs carry too)."""
    if not token:
        return []
    return [token, token.partition(":")[2]]


class ErrorCounter(logging.Handler):
    """Counts error lines: a traceback in the log is an error by definition, wherever it
    was logged (an action, a job step, the poller), and the update in flight learns of it."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            ERRORS.labels("exception").inc()
        report = current_report()
        if report is not None:
            report.errors += 1


def install_error_counter() -> None:
    """Idempotent: every stack in a process shares the root logger."""
    root = logging.getLogger()
    if not any(isinstance(h, ErrorCounter) for h in root.handlers):
        root.addHandler(ErrorCounter())


def _drop_color_message(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)
    return event


def configure_logging(
    *,
    level: str = "INFO",
    json_lines: bool = True,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Installs the pipeline on the root logger (replacing one installed before) and
    returns its handler; `stream` defaults to stderr."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    target = stream or sys.stderr
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=target.isatty())
    )
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json_lines:
        final.append(structlog.processors.format_exc_info)
    final += [renderer, Redactor(secrets)]
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    setattr(handler, _OURS, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    install_error_counter()
    # We log one line per update and per request ourselves, with the ids.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler
