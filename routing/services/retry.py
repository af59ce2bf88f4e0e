"""The one retry/backoff rule, shared by streaming generation and batch items."""

import math
import random


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    retry_after: float | None = None,
    ceiling: float | None = None,
) -> float:
    """Seconds to wait before attempt `attempt + 1`.

    Exponential with jitter: base x 2^(attempt-1) x U[0.5, 1.5), capped at `maximum`; never
    shorter than the upstream's Retry-After; never longer than `ceiling` (default `maximum`),
    so a huge or malformed Retry-After cannot park a retry for ever. Always finite, >= 0.
    """
    ceiling = maximum if ceiling is None else ceiling
    exponent = min(max(attempt - 1, 0), 60)  # 2^60 x any bounded base is already "maximum"
    delay = min(base * 2**exponent * (0.5 + random.random()), maximum)
    if retry_after is not None:
        try:
            wait = float(retry_after)
        except (TypeError, ValueError):
            wait = 0.0
        if math.isfinite(wait):
            delay = max(delay, wait)
    if not math.isfinite(delay):
        delay = ceiling
    return max(0.0, min(delay, ceiling))
