"""The Autotask error types, re-exported for the hook: they live in `include/autotask_errors.py`, because the
loader in `include/` catches them and `include/` imports nothing of `plugins/`."""

from include.autotask_errors import (
    AutotaskApiError,
    AutotaskAuthError,
    AutotaskBudgetExhaustedError,
    AutotaskNotAllowedError,
    AutotaskOutcomeUnknownError,
    AutotaskRateLimitError,
    AutotaskZoneError,
)

__all__ = [
    "AutotaskApiError",
    "AutotaskAuthError",
    "AutotaskBudgetExhaustedError",
    "AutotaskNotAllowedError",
    "AutotaskOutcomeUnknownError",
    "AutotaskRateLimitError",
    "AutotaskZoneError",
]
