"""Per-key rate limits (GCRA): 429 with Retry-After, no boundary burst, tokens reserved before
a request and settled after, shared through the cache (two processes on Redis)."""

import json
import os
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from accounts import ratelimit
from accounts.models import ApiKey
from accounts.ratelimit import rate_limit_add_tokens, rate_limit_reset
from tests.streams import read_body

pytestmark = pytest.mark.django_db

# A pinned clock: GCRA has no windows, but the tests move time by hand.
NOW = float(int(time.time()))


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    monkeypatch.setattr(ratelimit, "_now", lambda: NOW)


def issue(**limits) -> tuple[ApiKey, dict]:
    key, raw = ApiKey.issue(name="limited", **limits)
    # Test databases reuse primary keys; forget counters an earlier run left on Redis.
    rate_limit_reset(api_key_id=key.pk)
    return key, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_requests_per_minute_429_with_retry_after_and_headers(client):
    _, auth = issue(requests_per_minute=2)
    first = client.get("/api/model-rankings", **auth)
    assert first.status_code == 200
    assert first["X-RateLimit-Limit-Requests"] == "2"
    assert first["X-RateLimit-Remaining-Requests"] == "1"
    assert client.get("/api/model-rankings", **auth).status_code == 200
    denied = client.get("/api/model-rankings", **auth)
    assert denied.status_code == 429
    assert denied.json()["error"]["code"] == "rate_limited"
    # 2 per minute = one every 30 s: the next slot opens 30 s from now.
    assert denied["Retry-After"] == "30" and denied["X-RateLimit-Remaining-Requests"] == "0"
    # Other keys and other routes (/v1/) are counted separately / too.
    _, other = issue(requests_per_minute=2)
    assert client.get("/api/model-rankings", **other).status_code == 200
    assert client.get("/v1/models", **auth).status_code == 429


def test_requests_come_back_one_interval_at_a_time(client, monkeypatch):
    _, auth = issue(requests_per_minute=1)
    assert client.get("/api/model-rankings", **auth).status_code == 200
    assert client.get("/api/model-rankings", **auth).status_code == 429
    monkeypatch.setattr(ratelimit, "_now", lambda: NOW + 59)
    assert client.get("/api/model-rankings", **auth).status_code == 429
    monkeypatch.setattr(ratelimit, "_now", lambda: NOW + 60)
    assert client.get("/api/model-rankings", **auth).status_code == 200


def test_no_burst_across_a_minute_boundary(client, monkeypatch):
    """A fixed window lets 2x the limit through around a boundary; GCRA never allows more
    than the limit in any 60 s span."""
    _, auth = issue(requests_per_minute=10)
    allowed = 0
    for second in range(0, 120, 2):  # one request every 2 s for 2 minutes: 60 requests
        monkeypatch.setattr(ratelimit, "_now", lambda s=second: NOW + 59 + s / 60)
        allowed += client.get("/api/model-rankings", **auth).status_code == 200
    # 120 requests within ~2 seconds of clock time: only the burst of 10 passes.
    assert allowed == 10


@pytest.mark.django_db(transaction=True)
async def test_tokens_are_reserved_before_a_generation_and_settled_after(async_client):
    from asgiref.sync import sync_to_async

    from tests.factories import mock_model

    _, limited = await sync_to_async(issue)(tokens_per_minute=1000)
    headers = {"Authorization": limited["HTTP_AUTHORIZATION"]}
    await sync_to_async(mock_model)("mock/tpm", response="one two three", token_delay=0.05)
    body = {"model": "mock/tpm", "prompt": "hi", "max_tokens": 600}

    async def post():
        return await async_client.post(
            "/api/generate", body, content_type="application/json", headers=headers
        )

    first = await post()
    assert first.status_code == 200
    await read_body(first)  # finished: only what it used stays spent
    after = await async_client.get("/api/model-rankings", headers=headers)
    assert 900 < int(after["X-RateLimit-Remaining-Tokens"]) < 1000
    # Two requests that may each use 600 tokens do not both fit in 1000: while the first
    # runs, the second is a 429 before any upstream call.
    pending = await post()
    assert pending.status_code == 200
    denied = await post()
    assert denied.status_code == 429 and int(denied["Retry-After"]) >= 1
    assert (
        "600" in denied.json()["error"]["message"] or "tokens" in denied.json()["error"]["message"]
    )
    await read_body(pending)


def test_a_request_larger_than_the_token_limit_is_refused_outright(client):
    from tests.factories import mock_model

    _, limited = issue(tokens_per_minute=100)
    mock_model("mock/tpm2")
    body = {"model": "mock/tpm2", "prompt": "hi", "max_tokens": 500}
    denied = client.post("/api/generate", body, content_type="application/json", **limited)
    assert denied.status_code == 429
    assert "limit is 100 tokens per minute" in denied.json()["error"]["message"]


def test_tokens_per_minute_counts_finished_generations(client):
    key, auth = issue(tokens_per_minute=100)
    assert client.get("/api/model-rankings", **auth)["X-RateLimit-Remaining-Tokens"] == "100"
    rate_limit_add_tokens(api_key=key, tokens=60)
    assert client.get("/api/model-rankings", **auth)["X-RateLimit-Remaining-Tokens"] == "40"
    rate_limit_add_tokens(api_key=key, tokens=40)
    denied = client.get("/api/model-rankings", **auth)
    assert denied.status_code == 429 and "tokens per minute" in denied.json()["error"]["message"]


def test_global_defaults_and_zero_means_unlimited(client, settings):
    settings.TOKENFLOW_RATE_LIMIT_RPM = 1
    _, default = issue()
    assert client.get("/api/model-rankings", **default).status_code == 200
    assert client.get("/api/model-rankings", **default).status_code == 429
    _, unlimited = issue(requests_per_minute=0)
    for _ in range(3):
        response = client.get("/api/model-rankings", **unlimited)
        assert response.status_code == 200 and "X-RateLimit-Limit-Requests" not in response


def test_no_limits_means_no_cache_traffic(client, monkeypatch):
    _, auth = issue()
    monkeypatch.setattr(ratelimit, "_gcra", lambda *a, **k: pytest.fail("cache was used"))
    assert client.get("/api/model-rankings", **auth).status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_async_path_and_generation_tokens_are_accounted(async_client):
    """The fan-out's generations (agents and aggregator) reserve and settle the key's tokens
    on the async path: afterwards only what they used stays spent."""
    from asgiref.sync import sync_to_async

    from tests.pipelines.factories import pipeline

    key, auth = await sync_to_async(issue)(tokens_per_minute=2000)
    await sync_to_async(pipeline)(name="tpm", agents={"a": {"response": "one two three"}})
    headers = {"Authorization": auth["HTTP_AUTHORIZATION"]}
    payload = {"message": "count me", "message_id": "tpm1", "pipeline": "tpm"}
    response = await async_client.post(
        "/api/process", payload, content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    await read_body(response)
    after = await async_client.get("/api/model-rankings", headers=headers)
    remaining = int(after["X-RateLimit-Remaining-Tokens"])
    assert 1500 < remaining < 2000


CHILD = """
import json, sys, types
import django
django.setup()
from accounts import ratelimit
ratelimit._now = lambda: float(sys.argv[1])
key = types.SimpleNamespace(pk=int(sys.argv[2]), requests_per_minute=3, tokens_per_minute=None)
counts = [ratelimit.rate_limit_hit(api_key=key).requests_remaining for _ in range(3)]
tokens = types.SimpleNamespace(pk=int(sys.argv[3]), requests_per_minute=None, tokens_per_minute=500)
ratelimit.rate_limit_add_tokens(api_key=tokens, tokens=1000)
print(json.dumps(counts))
"""


@pytest.mark.redis
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_limits_are_shared_between_two_processes_on_redis(client):
    assert django_settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    key, auth = issue(requests_per_minute=3)
    tokens_key, tokens_auth = issue(tokens_per_minute=500)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(NOW), str(key.pk), str(tokens_key.pk)],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=django_settings.BASE_DIR,
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == [2, 1, 0]
    # The other process used this key's 3 requests: this process answers 429.
    denied = client.get("/api/model-rankings", **auth)
    assert denied.status_code == 429 and denied["Retry-After"]
    # ...and the tokens it accounted count here too.
    assert client.get("/api/model-rankings", **tokens_auth).status_code == 429


@pytest.mark.django_db(transaction=True)
async def test_concurrent_streams_per_key_are_capped(async_client, settings):
    from asgiref.sync import sync_to_async

    from tests.factories import mock_model

    settings.TOKENFLOW_MAX_STREAMS_PER_KEY = 2
    _, limited = await sync_to_async(issue)()
    headers = {"Authorization": limited["HTTP_AUTHORIZATION"]}
    await sync_to_async(mock_model)("mock/slow", response="a b c", token_delay=0.05)
    body = {"model": "mock/slow", "prompt": "hi"}

    async def post():
        return await async_client.post(
            "/api/generate", body, content_type="application/json", headers=headers
        )

    open_streams = [await post(), await post()]
    assert [r.status_code for r in open_streams] == [200, 200]
    third = await post()
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
    for response in open_streams:
        await read_body(response)  # finished: their slots are free again
    again = await post()
    assert again.status_code == 200
    await read_body(again)
