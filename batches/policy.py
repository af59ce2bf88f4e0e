"""Retry policy per job and the custom policy hook (a handler registered by dotted path).

A handler is `handler(item: ItemView, trajectory: list[dict]) -> Done | Continue | Fail | None`;
it runs after every attempt, sees all attempts so far (the last one is the current one) and
returns Done(result) to finish the item, Continue(new_params) to try again with other params,
Fail(message) to give up, or None to apply the job's default retry policy.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from routing.services.retry import backoff_delay

DEFAULT_RETRY_STATUSES = (408, 409, 425, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Done:
    result: Any


@dataclass(frozen=True)
class Continue:
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    message: str = "The policy handler gave up."


@dataclass(frozen=True)
class ItemView:
    """What a handler sees of an item (read-only)."""

    id: int
    custom_id: str
    params: dict[str, Any]
    attempts: int
    max_attempts: int


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    retry_statuses: tuple[int, ...] = DEFAULT_RETRY_STATUSES
    retry_timeouts: bool = True
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    timeout: float = 600.0

    @classmethod
    def for_job(cls, *, max_attempts: int, options: dict[str, Any]) -> "RetryPolicy":
        """The policy of a job row. Numbers are clamped to the settings' bounds here too:
        the API rejects them (400), but a row edited by hand must not overflow either."""
        backoff_cap = settings.TOKENFLOW_BATCH_MAX_BACKOFF
        return cls(
            max_attempts=max(1, min(int(max_attempts), MAX_ATTEMPTS)),
            retry_statuses=tuple(options.get("retry_statuses", DEFAULT_RETRY_STATUSES)),
            retry_timeouts=bool(options.get("retry_timeouts", True)),
            backoff_base=_bounded(
                options.get("backoff_base"), settings.TOKENFLOW_BATCH_BACKOFF_BASE, backoff_cap
            ),
            backoff_max=_bounded(
                options.get("backoff_max"), settings.TOKENFLOW_BATCH_BACKOFF_MAX, backoff_cap
            ),
            timeout=_bounded(
                options.get("timeout"),
                settings.TOKENFLOW_BATCH_TIMEOUT,
                settings.TOKENFLOW_BATCH_MAX_TIMEOUT,
            ),
        )

    def retryable(self, *, status_code: int | None, retryable: bool, timeout: bool) -> bool:
        if timeout:
            return self.retry_timeouts
        if status_code is not None and status_code in self.retry_statuses:
            return True
        return retryable and status_code is None

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (routing.services.retry, the one rule), never
        shorter than the upstream's Retry-After, never beyond TOKENFLOW_BATCH_MAX_BACKOFF."""
        return backoff_delay(
            attempt,
            base=self.backoff_base,
            maximum=self.backoff_max,
            retry_after=retry_after,
            ceiling=max(self.backoff_max, settings.TOKENFLOW_BATCH_MAX_BACKOFF),
        )


MAX_ATTEMPTS = 100  # per item, whatever a job asks for


def _bounded(value: Any, default: float, high: float) -> float:
    try:
        number = float(default if value is None else value)
    except (TypeError, ValueError):
        number = float(default)
    if not math.isfinite(number):
        number = high
    return max(0.0, min(number, high))


# --- hooks: policy handlers and request functions -------------------------------------------

LOCAL_PREFIX = "local:"  # an executor only the creating Python process has (batches.client)


class HookNotAllowed(ImportError):
    """A handler or executor path outside TOKENFLOW_BATCH_HANDLERS."""


def hook_allowed(path: str, *, executor: bool = False) -> bool:
    """Built-ins ('' and, for executors, 'local:<id>') or a dotted path listed in
    TOKENFLOW_BATCH_HANDLERS. The same answer for API keys, staff, the admin and scripts."""
    if not path or (executor and path.startswith(LOCAL_PREFIX)):
        return True
    return path in settings.TOKENFLOW_BATCH_HANDLERS


def hook_load(path: str, *, executor: bool = False) -> Callable | None:
    """The callable behind an allowed dotted path (None for ''); HookNotAllowed or
    ImportError otherwise. Nothing outside the allowlist is ever imported."""
    if not hook_allowed(path, executor=executor):
        kind = "executor" if executor else "handler"
        raise HookNotAllowed(
            f"The {kind} {path!r} is not allowed: list it in TOKENFLOW_BATCH_HANDLERS."
        )
    if not path or path.startswith(LOCAL_PREFIX):
        return None
    return import_string(path)
