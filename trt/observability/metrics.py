"""Every Prometheus metric the service exports, in one registry of its own.

A registry of our own (not the client's global one) means /metrics shows exactly
what ops/grafana/dashboard.json and ops/prometheus/alerts.yml are written
against, and the tests check those files against it. Metrics whose truth is in
the database (jobs, holds, payments, the connection pool) are read at scrape
time by `trt.observability.database`; the rest are counted where things happen.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Seconds; a tap should be answered well under Telegram's ~15 s spinner.
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# ---------------------------------------------------------------- updates

UPDATES = Counter(
    "trt_updates",
    "Telegram updates by type and outcome: ok, error (the user got an apology), "
    "unavailable (refused, Telegram redelivers), unhandled, duplicate, flooded, ignored.",
    ["type", "outcome"],
    registry=REGISTRY,
)
UPDATE_SECONDS = Histogram(
    "trt_update_handling_seconds",
    "Time from an update entering the dispatcher to its handling finished.",
    ["type"],
    buckets=_FAST,
    registry=REGISTRY,
)
CALLBACK_ANSWER_SECONDS = Histogram(
    "trt_callback_answer_seconds",
    "Time from a callback query's arrival to its answerCallbackQuery being sent.",
    buckets=_FAST,
    registry=REGISTRY,
)
CALLBACKS_UNANSWERED = Counter(
    "trt_callbacks_unanswered",
    "Callback queries handled without any answerCallbackQuery; must stay 0.",
    registry=REGISTRY,
)
ERRORS = Counter(
    "trt_errors",
    "Errors by kind: telegram_* (the Bot API refused a call), database_unavailable, "
    "update_unhandled (escaped every handler), exception (logged with a traceback).",
    ["kind"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------- HTTP and Telegram

HTTP_REQUESTS = Counter(
    "trt_http_requests",
    "HTTP requests served, by route template (never the raw path) and status.",
    ["route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "trt_http_request_seconds",
    "HTTP request latency by route template.",
    ["route"],
    buckets=_FAST,
    registry=REGISTRY,
)
TELEGRAM_SECONDS = Histogram(
    "trt_telegram_request_seconds",
    "Bot API call latency by method, retries after 429 included.",
    ["method"],
    buckets=_FAST,
    registry=REGISTRY,
)

# ---------------------------------------------------------------- jobs and KIE

JOB_TRANSITIONS = Counter(
    "trt_job_transitions",
    "Generation jobs entering each state, counted by this process.",
    ["state"],
    registry=REGISTRY,
)
KIE_SECONDS = Histogram(
    "trt_kie_request_seconds",
    "KIE API call latency by operation (create_task, record_info, credits), retries included.",
    ["operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
KIE_ERRORS = Counter(
    "trt_kie_errors",
    "KIE API calls that failed, by operation and error class.",
    ["operation", "kind"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------- readiness

READY = Gauge(
    "trt_ready",
    "1 while /readyz last said ready, 0 otherwise.",
    registry=REGISTRY,
)
