"""KIE.ai: the HTTP client the storefront generates with, and a fake KIE for tests and
`make run` without an API key (kie.fake_server, imported on its own so production code does
not load it)."""

from kie.client import KieClient
from kie.errors import (
    CreateOutcomeUnknown,
    FeatureDisabled,
    GenerationFailed,
    InsufficientCredits,
    KieError,
    Maintenance,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from kie.signing import sign, verify_signature
from kie.task import TaskInfo, parse_callback, parse_task

__all__ = [
    "CreateOutcomeUnknown",
    "FeatureDisabled",
    "GenerationFailed",
    "InsufficientCredits",
    "KieClient",
    "KieError",
    "Maintenance",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TaskInfo",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "parse_callback",
    "parse_task",
    "sign",
    "verify_signature",
]
