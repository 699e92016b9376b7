"""KIE's answer codes as exception classes, so callers branch on a type, not on a number.

KIE reports failures in the JSON body's `code`, often under HTTP 200, so the client maps the
body's code (or the HTTP status when the body has none) through `error_for`. `retryable` says
whether the same request may succeed later; the client itself retries only those it knows to
be safe (never a create whose outcome is unknown).
"""

from __future__ import annotations


class KieError(Exception):
    """Base of every KIE failure; `code` is KIE's code (None when there was no answer)."""

    default_code: int | None = None
    retryable: bool = False

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code if code is not None else self.default_code
        self.message = message
        super().__init__(f"KIE {self.code}: {message}" if self.code is not None else message)


class Unauthorized(KieError):
    """The API key is missing or wrong: a configuration problem, not a user's."""

    default_code = 401


class InsufficientCredits(KieError):
    """Our KIE account ran dry: every paid generation fails until someone tops it up."""

    default_code = 402


class NotFound(KieError):
    default_code = 404


class ValidationFailed(KieError):
    """KIE refused the request's parameters; repeating it unchanged cannot help."""

    default_code = 422


class RateLimited(KieError):
    """429 (per key) or 433 (per sub-key): back off and try again."""

    default_code = 429
    retryable = True


class Maintenance(KieError):
    default_code = 455
    retryable = True


class ServerError(KieError):
    """500 from KIE, or any 5xx or garbled answer from whatever stands in front of it."""

    default_code = 500
    retryable = True


class GenerationFailed(KieError):
    default_code = 501


class FeatureDisabled(KieError):
    default_code = 505


class Unavailable(KieError):
    """No answer: connection refused, DNS, or (for reads) a timeout; KIE may be back later."""

    retryable = True


class CreateOutcomeUnknown(KieError):
    """A createTask that may have reached KIE: timed out or lost after it was sent.

    The client never repeats it, since a second create would start (and bill) a second task
    for one job (MONEY.md S11). The caller decides: wait for the callback (its URL names the
    job), or give the job up after its deadline.
    """


_BY_CODE: dict[int, type[KieError]] = {
    401: Unauthorized,
    402: InsufficientCredits,
    404: NotFound,
    422: ValidationFailed,
    429: RateLimited,
    433: RateLimited,
    455: Maintenance,
    500: ServerError,
    501: GenerationFailed,
    505: FeatureDisabled,
}


def error_for(code: int, message: str) -> KieError:
    """The exception for a KIE code; unknown 5xx count as ServerError, other codes as KieError."""
    kind = _BY_CODE.get(code)
    if kind is None:
        kind = ServerError if 500 <= code < 600 else KieError
    return kind(message, code)
