"""Upstream faults, through the proxy in front of bench/mock_upstream.py: a connection reset in
the middle of a stream, and an upstream that stops answering for longer than the read timeout.

Stated bounds: the failure reaches the client within the read timeout (+ retries before the
first token), its row is failed with the partial text, and the next request works at once."""

import time

import openai
import pytest

from accounts.models import ApiKey
from routing.models import Generation, ModelRanking
from tests.faults.clients import OPEN, SCENARIO_MARKS, SseStream, stream
from tests.faults.conftest import UPSTREAM_READ_TIMEOUT

pytestmark = SCENARIO_MARKS


def upstream_model(stack, name: str, query: str) -> ModelRanking:
    """A custom OpenAI-compatible model served by the mock upstream through the proxy."""
    return ModelRanking.objects.create(
        name=f"custom/{name}",
        provider=ModelRanking.Provider.CUSTOM,
        upstream_model=f"bench?{query}",
        base_url=stack.upstream_base_url,
    )


@pytest.fixture
def key():
    return ApiKey.issue(name="faults")[1]


def assert_next_request_works(stack, key: str, model: ModelRanking) -> None:
    result = stream(stack.url, key, {"model": model.name, "prompt": "again"})
    assert result.last and result.last[0] == "end_stream", result
    assert Generation.objects.get(pk=result.generation_id).status == "completed"


def test_upstream_reset_mid_stream(stack, key):
    model = upstream_model(stack, "reset", "chunks=40&gap=0.05")
    started = SseStream(stack.url, key, {"model": model.name, "prompt": "hi"})
    started.start()
    assert started.first_text.wait(30)
    stack.upstream.reset_after(600)  # a few more chunks, then an RST from the "upstream"
    started.join(30)
    result = started.result
    assert result.transport_error is None, result
    name, data = result.last
    assert name == "error", result.names
    assert data["code"] == "upstream_unreachable" and data["status"] == 502, data
    row = Generation.objects.get(pk=result.generation_id)
    assert row.status == "failed" and row.error_code == "upstream_unreachable"
    assert row.output_text == result.text and row.output_text.startswith(" tok0 tok1")
    assert not Generation.objects.filter(status__in=OPEN).exists()
    stack.upstream.passthrough()
    started_next = time.monotonic()
    assert_next_request_works(stack, key, model)
    print(
        f"\n[faults] upstream reset: error event {data['code']}, next stream done in "
        f"{time.monotonic() - started_next:.2f} s"
    )


def test_upstream_stall_mid_stream_times_out(stack, key):
    model = upstream_model(stack, "stall-stream", "chunks=40&gap=0.05")
    started = SseStream(stack.url, key, {"model": model.name, "prompt": "hi"})
    started.start()
    assert started.first_text.wait(30)
    stalled_at = time.monotonic()
    stack.upstream.stall(60)
    started.join(30)
    waited = started.finished_at - stalled_at
    result = started.result
    name, data = result.last
    assert name == "error", result.names
    assert data["code"] == "upstream_timeout" and data["status"] == 504, data
    assert UPSTREAM_READ_TIMEOUT - 0.5 < waited < UPSTREAM_READ_TIMEOUT + 5, waited
    print(f"\n[faults] upstream stalled mid-stream: error event after {waited:.2f} s")
    row = Generation.objects.get(pk=result.generation_id)
    assert row.status == "failed" and row.error_code == "upstream_timeout"
    assert row.output_text == result.text and result.text
    assert not Generation.objects.filter(status__in=OPEN).exists()
    stack.upstream.passthrough()
    assert_next_request_works(stack, key, model)


def test_upstream_stall_before_the_answer_is_a_504(stack, key):
    """/v1/chat/completions (not streamed): every attempt times out -> 504, row failed."""
    model = upstream_model(stack, "stall-json", "chunks=3&gap=0.01")
    stack.upstream.stall(60)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": "hi"}]
        )
    waited = time.monotonic() - started
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    # TOKENFLOW_RETRY_ATTEMPTS (3) timeouts plus their backoff (0.5 s, 1 s, jittered).
    assert waited < 3 * UPSTREAM_READ_TIMEOUT + 5, waited
    print(f"\n[faults] upstream stalled before answering: 504 after {waited:.2f} s")
    row = Generation.objects.get(model_name=model.name)
    assert row.status == "failed" and row.error_code == "upstream_timeout"
    assert len(row.attempts) == 3
    stack.upstream.passthrough()
    completion = client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == " tok0 tok1 tok2"
    client.close()
