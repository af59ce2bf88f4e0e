"""Per-key rate limits: requests and tokens per minute, by GCRA (the generic cell rate
algorithm, a sliding window with no boundary burst).

Each key has a "theoretical arrival time" (TAT) per resource in the Django cache, so
several processes share it when the cache is Redis (`REDIS_URL`). A request costs one
emission interval (60 s / rpm); it is allowed while the TAT stays within one minute of
now, so a key never gets more than its limit in any 60-second span (a fixed window lets
2x through across a boundary). Tokens work the same way with a per-token interval:
`tokens_reserve` takes a request's prompt tokens plus its `max_tokens` before it starts
(429 when they do not fit) and `tokens_settle` gives back what it did not use.

On Redis every operation is one atomic Lua script (one round trip); other caches use a
process lock. If the cache is down, requests pass (fail open) and the error is logged;
for CACHE_RETRY_SECONDS after a failure the cache is not asked at all (a stalled Redis
would otherwise cost every request its timeout). docs/faults.md has the measurements.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

PERIOD = 60.0  # seconds: limits are per minute

# KEYS[1] = TAT key; ARGV = now, interval (s per unit), cost (units), period, mode
# mode "take": add cost if it fits (else refuse); "force": add cost regardless;
# "peek": change nothing. Returns {allowed (0/1), tat - now after the call} as strings.
_GCRA_LUA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local mode = ARGV[5]
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat < now then new_tat = now end
local allowed = 1
if mode == 'peek' then
  new_tat = tat
  if tat - now >= period then allowed = 0 end
elseif mode == 'take' and new_tat - now > period then
  allowed = 0
  new_tat = tat
end
if mode ~= 'peek' then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now + period) * 1000))
end
return {tostring(allowed), tostring(new_tat - now)}
"""

_lock = threading.Lock()

# After a cache failure, rate limits are off (fail open) for this long, then tried again.
CACHE_RETRY_SECONDS = 5.0
_cache_down_until = 0.0


def _cache_available() -> bool:
    return time.monotonic() >= _cache_down_until


def _cache_failed(what: str) -> None:
    """Log once per outage window and stop asking the cache for CACHE_RETRY_SECONDS."""
    global _cache_down_until
    _cache_down_until = time.monotonic() + CACHE_RETRY_SECONDS
    logger.warning(
        "Rate-limit cache unavailable (%s); limits off for %.0f s",
        what,
        CACHE_RETRY_SECONDS,
        exc_info=True,
    )


def _now() -> float:
    """The clock (tests pin it)."""
    return time.time()


@dataclass(frozen=True)
class RateLimitDecision:
    """One check's outcome; `headers()` renders OpenAI-style X-RateLimit-* headers."""

    rpm: int
    tpm: int
    requests_remaining: int | None
    tokens_remaining: int | None
    allowed: bool
    retry_after_seconds: float = 0.0
    reason: str = ""

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.retry_after_seconds))

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.rpm and self.requests_remaining is not None:
            headers["X-RateLimit-Limit-Requests"] = str(self.rpm)
            headers["X-RateLimit-Remaining-Requests"] = str(self.requests_remaining)
        if self.tpm and self.tokens_remaining is not None:
            headers["X-RateLimit-Limit-Tokens"] = str(self.tpm)
            headers["X-RateLimit-Remaining-Tokens"] = str(self.tokens_remaining)
        return headers

    def message(self) -> str:
        return self.reason


def limits_for(api_key) -> tuple[int, int]:
    """(rpm, tpm) of a key: its own values, else the global defaults; 0 = unlimited."""
    rpm = api_key.requests_per_minute
    tpm = api_key.tokens_per_minute
    return (
        settings.TOKENFLOW_RATE_LIMIT_RPM if rpm is None else rpm,
        settings.TOKENFLOW_RATE_LIMIT_TPM if tpm is None else tpm,
    )


def _key(api_key_id: int, resource: str) -> str:
    return f"ratelimit:{api_key_id}:{resource}"


def _redis_client():
    """The raw redis client of Django's RedisCache, or None for other backends.
    (`django.core.cache.cache` is a proxy: look at the backend object itself.)"""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        return backend._cache.get_client(None, write=True)
    return None


def rate_limits_in_process() -> bool:
    """Whether the limits live in this process (no Redis): checking them does no I/O."""
    return not isinstance(caches["default"], RedisCache)


def _gcra(key: str, *, now: float, interval: float, cost: float, mode: str) -> tuple[bool, float]:
    """(allowed, TAT - now after the call) for one GCRA step on `key`."""
    client = _redis_client()
    if client is not None:
        allowed, ahead = client.eval(
            _GCRA_LUA,
            1,
            cache.make_and_validate_key(key),
            repr(now),
            repr(interval),
            repr(cost),
            repr(PERIOD),
            mode,
        )
        return allowed in (1, b"1", "1"), float(ahead)
    with _lock:
        tat = max(float(cache.get(key) or 0.0), now)
        new_tat = max(tat + interval * cost, now)
        if mode == "peek":
            return tat - now < PERIOD, tat - now
        if mode == "take" and new_tat - now > PERIOD:
            return False, tat - now
        cache.set(key, new_tat, timeout=math.ceil(new_tat - now + PERIOD))
        return True, new_tat - now


def _remaining(limit: int, ahead: float) -> int:
    """Units still available now, given how far the TAT is ahead of now."""
    return max(0, min(limit, math.floor((PERIOD - ahead) * limit / PERIOD)))


def rate_limit_hit(*, api_key, now: float | None = None) -> RateLimitDecision | None:
    """Count one request for `api_key` (and check its tokens are not used up); None when
    the key has no limits or the cache is down."""
    rpm, tpm = limits_for(api_key)
    if (not rpm and not tpm) or not _cache_available():
        return None
    now = _now() if now is None else now
    try:
        requests_left = tokens_left = None
        if rpm:
            allowed, ahead = _gcra(
                _key(api_key.pk, "req"), now=now, interval=PERIOD / rpm, cost=1, mode="take"
            )
            requests_left = _remaining(rpm, ahead)
            if not allowed:
                return RateLimitDecision(
                    rpm,
                    tpm,
                    0,
                    None,
                    allowed=False,
                    retry_after_seconds=ahead + PERIOD / rpm - PERIOD,
                    reason=f"Rate limit exceeded: {rpm} requests per minute for this API key.",
                )
        if tpm:
            allowed, ahead = _gcra(
                _key(api_key.pk, "tok"), now=now, interval=PERIOD / tpm, cost=0, mode="peek"
            )
            tokens_left = _remaining(tpm, ahead)
            if not allowed:
                return RateLimitDecision(
                    rpm,
                    tpm,
                    requests_left,
                    0,
                    allowed=False,
                    retry_after_seconds=ahead - PERIOD + PERIOD / tpm,
                    reason=f"Rate limit exceeded: {tpm} tokens per minute for this API key.",
                )
    except Exception:  # noqa: BLE001 - a broken cache must not take the API down
        _cache_failed("request let through")
        return None
    return RateLimitDecision(rpm, tpm, requests_left, tokens_left, allowed=True)


def tokens_reserve(*, api_key, tokens: int, now: float | None = None) -> int:
    """Reserve `tokens` (prompt + max_tokens) of the key's per-minute budget before a
    request starts; the number reserved (0: no token limit). 429 ApiError when they do
    not fit, with the time until they would."""
    if api_key is None or tokens <= 0:
        return 0
    _rpm, tpm = limits_for(api_key)
    if not tpm:
        return 0
    if tokens > tpm:
        raise ApiError(
            f"This request may use {tokens} tokens (prompt + max_tokens); this API key's "
            f"limit is {tpm} tokens per minute. Lower max_tokens or the prompt.",
            code="rate_limited",
            status=429,
            retry_after=PERIOD,
        )
    if not _cache_available():
        return 0
    now = _now() if now is None else now
    interval = PERIOD / tpm
    try:
        allowed, ahead = _gcra(
            _key(api_key.pk, "tok"), now=now, interval=interval, cost=tokens, mode="take"
        )
    except Exception:  # noqa: BLE001
        _cache_failed("tokens not reserved")
        return 0
    if not allowed:
        raise ApiError(
            f"Rate limit exceeded: {tpm} tokens per minute for this API key "
            f"({tokens} needed, {_remaining(tpm, ahead)} available).",
            code="rate_limited",
            status=429,
            retry_after=ahead + tokens * interval - PERIOD,
        )
    return tokens


def tokens_settle(*, api_key, reserved: int, used: int) -> None:
    """After a request: give back what it reserved but did not use, or charge the excess."""
    if api_key is None or reserved == used:
        return
    _rpm, tpm = limits_for(api_key)
    if not tpm or not _cache_available():
        return
    try:
        _gcra(
            _key(api_key.pk, "tok"),
            now=_now(),
            interval=PERIOD / tpm,
            cost=used - reserved,
            mode="force",
        )
    except Exception:  # noqa: BLE001
        _cache_failed("tokens not settled")


def rate_limit_add_tokens(*, api_key, tokens: int) -> None:
    """Account tokens used without a reservation (e.g. batch items)."""
    tokens_settle(api_key=api_key, reserved=0, used=tokens)


def rate_limit_reset(*, api_key_id: int) -> None:
    """Forget a key's counters (admin/tests)."""
    cache.delete_many([_key(api_key_id, name) for name in ("req", "tok", "streams")])


# --- concurrent streams per key ----------------------------------------------------------

# KEYS[1] = the key's set of open streams (score = expiry); ARGV = now, cap, id, expiry.
_STREAM_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[1])) + 1)
return 1
"""


def streams_acquire(*, api_key, stream_id: str, now: float | None = None) -> bool:
    """Count one open stream for the key; 429 `too_many_streams` beyond
    TOKENFLOW_MAX_STREAMS_PER_KEY. A slot a dead process never released expires after
    TOKENFLOW_STREAM_SLOT_SECONDS. True if a slot was taken (release it)."""
    cap = settings.TOKENFLOW_MAX_STREAMS_PER_KEY
    if api_key is None or not cap or not _cache_available():
        return False
    now = _now() if now is None else now
    expiry = now + settings.TOKENFLOW_STREAM_SLOT_SECONDS
    key = _key(api_key.pk, "streams")
    try:
        client = _redis_client()
        if client is not None:
            args = (repr(now), str(cap), stream_id, repr(expiry))
            allowed = client.eval(_STREAM_LUA, 1, cache.make_and_validate_key(key), *args)
        else:
            with _lock:
                open_streams = {
                    sid: until for sid, until in (cache.get(key) or {}).items() if until > now
                }
                allowed = len(open_streams) < cap
                if allowed:
                    open_streams[stream_id] = expiry
                    cache.set(key, open_streams, timeout=settings.TOKENFLOW_STREAM_SLOT_SECONDS)
    except Exception:  # noqa: BLE001
        _cache_failed("stream not counted")
        return False
    if not int(allowed):
        raise ApiError(
            f"This API key already has {cap} streams open (TOKENFLOW_MAX_STREAMS_PER_KEY); "
            "wait for one to finish.",
            code="too_many_streams",
            status=429,
            retry_after=1,
        )
    return True


def streams_release(*, api_key_id: int, stream_id: str) -> None:
    if not _cache_available():
        return  # the slot expires after TOKENFLOW_STREAM_SLOT_SECONDS
    key = _key(api_key_id, "streams")
    try:
        client = _redis_client()
        if client is not None:
            client.zrem(cache.make_and_validate_key(key), stream_id)
            return
        with _lock:
            open_streams = cache.get(key) or {}
            if open_streams.pop(stream_id, None) is not None:
                cache.set(key, open_streams, timeout=settings.TOKENFLOW_STREAM_SLOT_SECONDS)
    except Exception:  # noqa: BLE001
        _cache_failed("stream slot not released")
