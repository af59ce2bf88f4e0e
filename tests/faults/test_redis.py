"""Redis stalled, then down, under a live TokenFlow: the API keeps answering (rate limits fail
open, no 500s), ws/generate/ (no channel layer) keeps working, and limits are enforced again
within 10 s of Redis' return.

Stated bounds: while Redis is stalled, one request per CACHE_RETRY_SECONDS (5 s) pays the
cache timeout (TOKENFLOW_REDIS_TIMEOUT, 1 s); every other request is as fast as usual."""

import json
import time

import httpx
import openai
import pytest
from websockets.sync.client import connect as ws_connect

from accounts.models import ApiKey
from routing.models import Generation
from tests.factories import mock_model
from tests.faults.clients import OPEN, SCENARIO_MARKS, stream

pytestmark = SCENARIO_MARKS

RPM = 3  # the key's limit: the outage lets more through (fail open), recovery enforces it
RECOVERY = 10.0


def api_calls(stack, key: str, model: str) -> list[tuple[str, int, float]]:
    """One request on each HTTP surface: (what, status, seconds)."""
    calls = []
    started = time.monotonic()
    result = stream(stack.url, key, {"model": model, "prompt": "hi"}, timeout=30)
    assert result.last and result.last[0] == "end_stream", result
    calls.append(("/api/generate", result.status, time.monotonic() - started))
    with openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        started = time.monotonic()
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "still here"
        calls.append(("/v1/chat/completions", 200, time.monotonic() - started))
        started = time.monotonic()
        chunks = list(
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls.append(("/v1/chat/completions stream", 200, time.monotonic() - started))
    return calls


def ws_generate(stack, key: str, model: str) -> str:
    with ws_connect(
        f"{stack.url.replace('http', 'ws', 1)}/ws/generate/",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=30,
    ) as socket:
        socket.send(json.dumps({"type": "generate", "model": model, "prompt": "hi"}))
        text = ""
        while True:
            message = json.loads(socket.recv(timeout=30))
            if message["type"] == "token":
                text += message["text"]
            if message["type"] in ("end", "error"):
                assert message["type"] == "end", message
                return text


def test_redis_stalled_then_down(stack):
    key = ApiKey.issue(name="faults-redis", requests_per_minute=RPM, tokens_per_minute=100_000)[1]
    model = mock_model("mock/redis", response="still here").name

    stack.redis.stall(60)  # every Redis byte frozen: calls time out
    stalled = api_calls(stack, key, model)
    stack.redis.refuse()  # Redis down: connections reset at once
    time.sleep(5.5)  # past the breaker window: the cache is asked (and fails) again
    down = api_calls(stack, key, model) + api_calls(stack, key, model)
    assert ws_generate(stack, key, model) == "still here"
    for what, status, _seconds in stalled + down:
        assert status == 200, what
    assert len(stalled + down) > RPM  # over the key's limit: failed open
    # One request pays the cache timeout (1 s), the others skip the cache.
    assert sorted(seconds for *_, seconds in stalled)[-2] < 1.0, stalled
    assert max(seconds for *_, seconds in stalled) < 5, stalled
    assert max(seconds for *_, seconds in down) < 5, down

    stack.redis.passthrough()
    back_at = time.monotonic()
    statuses = []
    while True:  # the limit comes back: RPM requests pass, then a 429
        response = httpx.post(
            f"{stack.url}/api/generate",
            json={"model": model, "prompt": "x"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
        assert time.monotonic() - back_at < RECOVERY, statuses
        time.sleep(0.25)
    enforced = time.monotonic() - back_at
    assert response.json()["error"]["code"] == "rate_limited" and "Retry-After" in response.headers
    assert not Generation.objects.filter(status__in=OPEN).exists()
    print(
        f"\n[faults] redis stalled: {[(w, round(s, 2)) for w, _, s in stalled]}; down: max "
        f"{max(s for *_, s in down):.2f} s over {len(down)} calls; limit enforced again "
        f"{enforced:.2f} s after Redis returned ({statuses})"
    )


@pytest.fixture(autouse=True)
def _no_limit_leftovers(stack):
    yield
    stack.heal()
