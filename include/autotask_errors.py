"""Typed errors raised by the Autotask hook (`connectors.autotask_hook`); each keeps Autotask's own error text.

They live in `include/` because the loader catches them and `include/` imports nothing of `plugins/`;
`connectors.autotask_errors` re-exports them for the hook.

The messages carry the entity, the verb, the HTTP status and what Autotask said — never a header, so the
API secret cannot leak through an exception, a log line or XCom.
"""

from __future__ import annotations

from datetime import datetime


class AutotaskApiError(Exception):
    """Autotask answered with something other than 200 (or did not answer at all).

    `status` is None when no HTTP response arrived (connection failure, timeout). `retryable` is set by
    the hook when sending the same request again is safe (a read, or a write that provably did not happen).
    """

    retryable: bool = False

    def __init__(self, entity: str, verb: str, status: int | None, errors: list[str]) -> None:
        self.entity = entity
        self.verb = verb
        self.status = status
        self.errors = list(errors)
        status_text = f"HTTP {status}" if status is not None else "no response"
        detail = "; ".join(self.errors) if self.errors else "(no error text)"
        super().__init__(f"Autotask {verb} {entity} failed ({status_text}): {detail}")


class AutotaskAuthError(AutotaskApiError):
    """401: wrong credentials, or a wrong zone (a wrong zone also answers 401)."""


class AutotaskNotAllowedError(AutotaskApiError):
    """405: the entity does not support this verb (e.g. querying ContractServiceAdjustments)."""


class AutotaskRateLimitError(AutotaskApiError):
    """429, or the per-endpoint thread limit (error code Itgenatr005) whatever its status.

    The request was rejected before it was processed, so even a write may be retried.
    """

    def __init__(
        self, entity: str, verb: str, status: int | None, errors: list[str], retry_after_s: float | None = None
    ) -> None:
        super().__init__(entity, verb, status, errors)
        self.retry_after_s = retry_after_s


class AutotaskOutcomeUnknownError(AutotaskApiError):
    """A write (create, update, adjustment) that may or may not have been applied.

    Raised on a timeout or dropped connection after the request was sent, or a 502/503/504 gateway
    answer. The hook never retries these: the caller must look the record up before trying again.
    """

    def __init__(self, entity: str, verb: str, status: int | None, errors: list[str]) -> None:
        super().__init__(entity, verb, status, errors)
        self.args = (f"{self.args[0]} — the write may have been applied; look it up before retrying",)


class AutotaskZoneError(AutotaskApiError):
    """Zone discovery failed (e.g. "Zone information could not be determined" for an unknown user)."""


class AutotaskBudgetExhaustedError(AutotaskRateLimitError):
    """Autotask's hourly request budget ran out (a 429 for the threshold, or the budget read shows it used up).

    Not retried inside the request: the wait is up to an hour. The message says in plain words that the
    budget ran out, how much of it is used, and when requests go on (`resume_at`, UTC). Like any 429, the
    request was rejected before it was processed, so nothing of it was applied.
    """

    def __init__(
        self,
        entity: str,
        verb: str,
        status: int | None,
        errors: list[str],
        *,
        resume_at: datetime,
        used: int | None,
        limit: int | None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(entity, verb, status, errors, retry_after_s)
        self.resume_at = resume_at
        self.used = used
        self.limit = limit
        self.retryable = False
        budget = f"{used:,} of {limit:,} requests" if used is not None and limit is not None else "all requests"
        self.args = (
            f"Autotask's hourly request budget ran out ({budget} of the rolling hour are used, by this and every "
            f"other integration): {verb} {entity} was not sent. Requests go on at about "
            f"{resume_at:%Y-%m-%d %H:%M:%S} UTC ({'; '.join(self.errors) or 'no detail'}).",
        )
