"""Per-key rate limits: requests and tokens per minute, in fixed one-minute windows.

Counters live in the Django cache, so several processes share them when the cache is
Redis (`REDIS_URL`). On Redis a request costs one round trip (a pipeline: INCR the
request counter, refresh its expiry, GET the token counter); other caches use the
portable cache API. Tokens are added when a generation finishes
(`rate_limit_add_tokens`) and checked before the next request. If the cache is down,
requests pass (fail open) and the error is logged.
"""

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

WINDOW = 60  # seconds
TTL = 2 * WINDOW


def _now() -> float:
    """The clock (tests pin it so that a minute boundary cannot split a test)."""
    return time.time()


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of one check; `headers()` renders OpenAI-style X-RateLimit-* headers."""

    rpm: int
    tpm: int
    requests: int
    tokens: int
    reset: float  # seconds until the window ends

    @property
    def requests_exceeded(self) -> bool:
        return bool(self.rpm) and self.requests > self.rpm

    @property
    def tokens_exceeded(self) -> bool:
        return bool(self.tpm) and self.tokens >= self.tpm

    @property
    def allowed(self) -> bool:
        return not (self.requests_exceeded or self.tokens_exceeded)

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset))

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        reset = f"{self.retry_after}s"
        if self.rpm:
            headers["X-RateLimit-Limit-Requests"] = str(self.rpm)
            headers["X-RateLimit-Remaining-Requests"] = str(max(0, self.rpm - self.requests))
            headers["X-RateLimit-Reset-Requests"] = reset
        if self.tpm:
            headers["X-RateLimit-Limit-Tokens"] = str(self.tpm)
            headers["X-RateLimit-Remaining-Tokens"] = str(max(0, self.tpm - self.tokens))
            headers["X-RateLimit-Reset-Tokens"] = reset
        return headers

    def message(self) -> str:
        if self.requests_exceeded:
            return f"Rate limit exceeded: {self.rpm} requests per minute for this API key."
        return f"Rate limit exceeded: {self.tpm} tokens per minute for this API key."


def limits_for(api_key) -> tuple[int, int]:
    """(rpm, tpm) of a key: its own values, else the global defaults; 0 = unlimited."""
    rpm = api_key.requests_per_minute
    tpm = api_key.tokens_per_minute
    return (
        settings.TOKENFLOW_RATE_LIMIT_RPM if rpm is None else rpm,
        settings.TOKENFLOW_RATE_LIMIT_TPM if tpm is None else tpm,
    )


def _window(now: float) -> tuple[int, float]:
    window = int(now // WINDOW)
    return window, (window + 1) * WINDOW - now


def _keys(api_key_id: int, window: int) -> tuple[str, str]:
    return f"ratelimit:{api_key_id}:{window}:req", f"ratelimit:{api_key_id}:{window}:tok"


def _redis_client():
    """The raw redis client of Django's RedisCache, or None for other backends."""
    inner = getattr(cache, "_cache", None)
    if type(cache).__name__ == "RedisCache" and hasattr(inner, "get_client"):
        return inner.get_client(None, write=True)
    return None


def _count_request(req_key: str, tok_key: str) -> tuple[int, int]:
    client = _redis_client()
    if client is not None:
        req, tok = cache.make_and_validate_key(req_key), cache.make_and_validate_key(tok_key)
        pipe = client.pipeline(transaction=False)
        pipe.incr(req)
        pipe.expire(req, TTL)
        pipe.get(tok)
        requests, _, tokens = pipe.execute()
        return int(requests), int(tokens or 0)
    cache.add(req_key, 0, TTL)
    try:
        requests = cache.incr(req_key)
    except ValueError:  # expired between add and incr
        cache.set(req_key, 1, TTL)
        requests = 1
    return requests, int(cache.get(tok_key) or 0)


def rate_limit_hit(*, api_key, now: float | None = None) -> RateLimitDecision | None:
    """Count one request for `api_key` and decide; None when the key has no limits."""
    rpm, tpm = limits_for(api_key)
    if not rpm and not tpm:
        return None
    window, reset = _window(_now() if now is None else now)
    try:
        requests, tokens = _count_request(*_keys(api_key.pk, window))
    except Exception:  # noqa: BLE001 - a broken cache must not take the API down
        logger.exception("Rate-limit cache unavailable; letting the request through")
        return None
    return RateLimitDecision(rpm=rpm, tpm=tpm, requests=requests, tokens=tokens, reset=reset)


def rate_limit_add_tokens(*, api_key_id: int | None, tokens: int) -> None:
    """Account tokens a finished generation used (prompt + completion) to its key."""
    if api_key_id is None or tokens <= 0:
        return
    window, _ = _window(_now())
    _, tok_key = _keys(api_key_id, window)
    try:
        client = _redis_client()
        if client is not None:
            key = cache.make_and_validate_key(tok_key)
            pipe = client.pipeline(transaction=False)
            pipe.incrby(key, tokens)
            pipe.expire(key, TTL)
            pipe.execute()
            return
        if not cache.add(tok_key, tokens, TTL):
            try:
                cache.incr(tok_key, tokens)
            except ValueError:
                cache.set(tok_key, tokens, TTL)
    except Exception:  # noqa: BLE001
        logger.exception("Rate-limit cache unavailable; tokens not accounted")


def rate_limit_reset(*, api_key_id: int, now: float | None = None) -> None:
    """Forget the current window's counters of a key (admin/tests)."""
    window, _ = _window(_now() if now is None else now)
    cache.delete_many(list(_keys(api_key_id, window)))
