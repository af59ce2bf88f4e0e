"""Retry policy per job and the custom policy hook (a handler registered by dotted path).

A handler is `handler(item: ItemView, trajectory: list[dict]) -> Done | Continue | Fail | None`;
it runs after every attempt, sees all attempts so far (the last one is the current one) and
returns Done(result) to finish the item, Continue(new_params) to try again with other params,
Fail(message) to give up, or None to apply the job's default retry policy.
"""

import random
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

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
        return cls(
            max_attempts=max_attempts,
            retry_statuses=tuple(options.get("retry_statuses", DEFAULT_RETRY_STATUSES)),
            retry_timeouts=bool(options.get("retry_timeouts", True)),
            backoff_base=float(options.get("backoff_base", settings.TOKENFLOW_BATCH_BACKOFF_BASE)),
            backoff_max=float(options.get("backoff_max", settings.TOKENFLOW_BATCH_BACKOFF_MAX)),
            timeout=float(options.get("timeout", settings.TOKENFLOW_BATCH_TIMEOUT)),
        )

    def retryable(self, *, status_code: int | None, retryable: bool, timeout: bool) -> bool:
        if timeout:
            return self.retry_timeouts
        if status_code is not None and status_code in self.retry_statuses:
            return True
        return retryable and status_code is None

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter in [0.5, 1.5) x base x 2^(n-1), capped, but
        never shorter than the upstream's Retry-After."""
        delay = min(
            self.backoff_base * 2 ** (attempt - 1) * (0.5 + random.random()), self.backoff_max
        )
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return delay
