"""Logging for the service: one pipeline for our lines and every library's.

Everything goes through the standard `logging` module (the engine, aiogram,
SQLAlchemy and the KIE client already log there), and structlog's
ProcessorFormatter renders each record: JSON lines in production for the log
collector, a readable console in development. The correlation ids bound in
`trt.observability.context` are merged into every line, whoever logged it.

Secrets are removed from the rendered line itself, after everything else, so
that a token inside a URL, an exception message or a traceback is caught too.

The pipeline's handler is the only one on the root logger: any other (one from
`logging.basicConfig`, from an earlier call) would write each record a second
time, unredacted, with its traceback over many lines. It counts error lines too,
in place of the separate `ErrorCounter`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from trt.observability.context import current_report

REDACTED = "***"
# Shorter values would blank out ordinary words; real secrets are far longer.
MIN_SECRET_LENGTH = 6


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


def _count_error(record: logging.LogRecord) -> None:
    if record.exc_info:
        # Imported here: the editor and operator commands (`trt migrate`, `trt flows
        # check`) log through this pipeline and need no metrics (prometheus_client's
        # import is a tenth of `trt migrate`'s time).
        from trt.observability.metrics import ERRORS

        ERRORS.labels("exception").inc()
    report = current_report()
    if report is not None:
        report.errors += 1


class ErrorCounter(logging.Handler):
    """Counts error lines: a traceback in the log is an error by definition, wherever it
    was logged (an action, a job step, the poller), and the update in flight learns of it.
    Installed only where the pipeline is not (tests); the pipeline counts them itself."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        _count_error(record)


class PipelineHandler(logging.StreamHandler[IO[str]]):
    """The pipeline's output, and the error counter: one handler, so one line a record."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            _count_error(record)
        super().emit(record)


def install_error_counter() -> None:
    """Idempotent: every stack in a process shares the root logger, and a pipeline
    installed by `configure_logging` counts already."""
    root = logging.getLogger()
    if not any(isinstance(h, ErrorCounter | PipelineHandler) for h in root.handlers):
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
    """Installs the pipeline as the root logger's only handler and returns it; `stream`
    defaults to stderr. Every handler there before is removed (one of an earlier call,
    `logging.basicConfig`'s, the `ErrorCounter`), so calling it again replaces the
    pipeline rather than adding a second one."""
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
    handler = PipelineHandler(target)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
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


@contextmanager
def logging_restored() -> Iterator[None]:
    """Puts the root logger's handlers and level, and structlog's configuration, back as
    they were on exit: for a caller whose process is not ours to configure for good (a
    test calling the command line in-process)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config, configured = structlog.get_config(), structlog.is_configured()
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
