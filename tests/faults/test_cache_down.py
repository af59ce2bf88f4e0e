"""Redis (the Django cache) down or stalled, in-process, with the real RedisCache backend and a
fault proxy in front: rate limits fail open quickly, stop asking the cache for a while, and
are enforced again once it is back; classification keeps its routes stamp."""

import os
import time
from urllib.parse import urlsplit

import pytest
from django.core.cache import cache

from accounts import ratelimit
from accounts.models import ApiKey
from routing.classifiers import cache as routes_cache
from tests.faults.proxy import FaultProxy

TIMEOUT = 0.3  # the cache's socket timeouts in these tests (TOKENFLOW_REDIS_TIMEOUT)


@pytest.fixture(autouse=True)
def breaker_reset():
    ratelimit._cache_down_until = 0.0
    yield
    ratelimit._cache_down_until = 0.0


def redis_target() -> tuple[str, int, str]:
    parts = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return parts.hostname or "127.0.0.1", parts.port or 6379, parts.path or "/0"


@pytest.fixture
def proxied_cache(settings):
    """The default cache is Redis through a fault proxy (whatever REDIS_URL says)."""
    host, port, db = redis_target()
    with FaultProxy(host, port) as proxy:
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{proxy.port}{db}",
                "KEY_PREFIX": f"faults-{os.getpid()}",
                "OPTIONS": {"socket_connect_timeout": TIMEOUT, "socket_timeout": TIMEOUT},
            }
        }
        yield proxy


@pytest.fixture
def limited_key(db):
    return ApiKey.issue(name="cache-down", requests_per_minute=2, tokens_per_minute=1000)[0]


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_rate_limits_fail_open_fast_then_skip_the_cache(proxied_cache, limited_key, fault):
    getattr(proxied_cache, fault)()
    started = time.monotonic()
    assert ratelimit.rate_limit_hit(api_key=limited_key) is None  # let through
    assert time.monotonic() - started < 4 * TIMEOUT + 0.5
    accepted = proxied_cache.stats.accepted
    started = time.monotonic()
    for _ in range(5):  # over the limit of 2, all let through, without touching Redis
        assert ratelimit.rate_limit_hit(api_key=limited_key) is None
        assert ratelimit.tokens_reserve(api_key=limited_key, tokens=900) == 0
        ratelimit.tokens_settle(api_key=limited_key, reserved=0, used=900)
    assert time.monotonic() - started < 0.1
    assert proxied_cache.stats.accepted == accepted


def test_routes_stamp_survives_a_dead_cache(proxied_cache):
    proxied_cache.refuse()
    stamp = routes_cache.routes_version()
    assert stamp.startswith("unavailable-")
    assert routes_cache.routes_version() == stamp  # stable within its window: no rebuild storm
    routes_cache.routes_changed()  # logged, not raised


@pytest.mark.redis
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_limits_are_enforced_again_after_the_outage(proxied_cache, limited_key, monkeypatch):
    monkeypatch.setattr(ratelimit, "CACHE_RETRY_SECONDS", 0.5)
    proxied_cache.refuse()
    assert ratelimit.rate_limit_hit(api_key=limited_key) is None
    proxied_cache.passthrough()
    time.sleep(0.6)
    decisions = [ratelimit.rate_limit_hit(api_key=limited_key) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert routes_cache.routes_version() and not routes_cache.routes_version().startswith(
        "unavailable-"
    )
    cache.delete_many(
        [ratelimit._key(limited_key.pk, "req"), ratelimit._key(limited_key.pk, "tok")]
    )
