"""Per-key rate limits: 429 with Retry-After, shared through the cache (two processes on Redis)."""

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

pytestmark = pytest.mark.django_db

# A pinned clock 1 s into a minute window, so no test straddles a window boundary.
NOW = (int(time.time()) // 60) * 60 + 1.0


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    monkeypatch.setattr(ratelimit, "_now", lambda: NOW)


def issue(**limits) -> tuple[ApiKey, dict]:
    key, raw = ApiKey.issue(name="limited", **limits)
    # Test databases reuse primary keys; forget counters an earlier run left on Redis.
    for now in (NOW, NOW + 60):
        rate_limit_reset(api_key_id=key.pk, now=now)
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
    assert denied["Retry-After"] == "59" and denied["X-RateLimit-Remaining-Requests"] == "0"
    # Other keys and other routes (/v1/) are counted separately / too.
    _, other = issue(requests_per_minute=2)
    assert client.get("/api/model-rankings", **other).status_code == 200
    assert client.get("/v1/models", **auth).status_code == 429


def test_next_window_lets_requests_through_again(client, monkeypatch):
    _, auth = issue(requests_per_minute=1)
    assert client.get("/api/model-rankings", **auth).status_code == 200
    assert client.get("/api/model-rankings", **auth).status_code == 429
    monkeypatch.setattr(ratelimit, "_now", lambda: NOW + 60)
    assert client.get("/api/model-rankings", **auth).status_code == 200


def test_tokens_per_minute_counts_finished_generations(client):
    key, auth = issue(tokens_per_minute=100)
    assert client.get("/api/model-rankings", **auth)["X-RateLimit-Remaining-Tokens"] == "100"
    rate_limit_add_tokens(api_key_id=key.pk, tokens=60)
    assert client.get("/api/model-rankings", **auth)["X-RateLimit-Remaining-Tokens"] == "40"
    rate_limit_add_tokens(api_key_id=key.pk, tokens=40)
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
    monkeypatch.setattr(ratelimit, "_count_request", lambda *a: pytest.fail("cache was used"))
    assert client.get("/api/model-rankings", **auth).status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_async_path_and_generation_tokens_are_accounted(async_client):
    """A finished generation (via the _finish hook) spends the key's tokens; the async
    middleware then answers 429 on /api/process."""
    from asgiref.sync import sync_to_async

    from tests.pipelines.factories import pipeline

    key, auth = await sync_to_async(issue)(tokens_per_minute=5)
    await sync_to_async(pipeline)(name="tpm", agents={"a": {"response": "one two three"}})
    headers = {"Authorization": auth["HTTP_AUTHORIZATION"]}
    payload = {"message": "count me", "message_id": "tpm1", "pipeline": "tpm"}
    response = await async_client.post(
        "/api/process", payload, content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    b"".join([chunk async for chunk in response.streaming_content])
    payload["message_id"] = "tpm2"
    denied = await async_client.post(
        "/api/process", payload, content_type="application/json", headers=headers
    )
    assert denied.status_code == 429 and denied["X-RateLimit-Remaining-Tokens"] == "0"
    assert int(denied["Retry-After"]) >= 1


CHILD = """
import json, sys, types
import django
django.setup()
from accounts import ratelimit
ratelimit._now = lambda: float(sys.argv[1])
key = types.SimpleNamespace(pk=int(sys.argv[2]), requests_per_minute=3, tokens_per_minute=None)
counts = [ratelimit.rate_limit_hit(api_key=key).requests for _ in range(3)]
ratelimit.rate_limit_add_tokens(api_key_id=int(sys.argv[3]), tokens=1000)
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
    assert json.loads(child.stdout.strip().splitlines()[-1]) == [1, 2, 3]
    # The other process used this key's 3 requests: this process answers 429.
    denied = client.get("/api/model-rankings", **auth)
    assert denied.status_code == 429 and denied["Retry-After"]
    # ...and the tokens it accounted count here too.
    assert client.get("/api/model-rankings", **tokens_auth).status_code == 429
