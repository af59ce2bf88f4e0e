"""The openai_compat provider against the in-process mock upstream (loopback, no network)."""

import asyncio
import os
from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async

from bench.mock_upstream import MockUpstream
from routing.models import Generation, ModelRanking
from routing.providers.base import ChatRequest, ProviderError
from routing.providers.openai_compat import (
    OpenAICompatProvider,
    clients_close,
    parse_retry_after,
)
from routing.services.generation import (
    GenerationParams,
    generation_complete,
    generation_prepare,
    generation_run,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def upstream():
    server = MockUpstream(chunks=5, gap=0)
    port = await server.start()
    server.base_url = f"http://127.0.0.1:{port}/v1"
    yield server
    await clients_close()
    await server.close()


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001


def custom_model(base_url: str, upstream_model: str, **fields) -> ModelRanking:
    return ModelRanking.objects.create(
        name=f"custom/{upstream_model}",
        provider=ModelRanking.Provider.CUSTOM,
        upstream_model=upstream_model,
        base_url=base_url,
        **fields,
    )


async def run(model: ModelRanking) -> Generation:
    generation = await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        params=GenerationParams(max_tokens=50),
        api_key=None,
        transport="test",
    )
    return await generation_complete(generation)


async def test_streams_text_and_usage(upstream):
    model = await sync_to_async(custom_model)(upstream.base_url, "bench?chunks=4&gap=0")
    row = await run(model)
    assert row.status == "completed"
    assert row.output_text == " tok0 tok1 tok2 tok3"
    assert row.completion_tokens == 4 and row.prompt_tokens == 3 and row.finish_reason == "stop"


async def test_429_is_retried_with_retry_after(upstream):
    model = await sync_to_async(custom_model)(
        upstream.base_url, "bench?chunks=2&gap=0&status=429&fail_times=1&retry_after=0"
    )
    row = await run(model)
    assert row.status == "completed" and row.output_text == " tok0 tok1"
    assert [a["code"] for a in row.attempts] == ["rate_limited"]


async def test_persistent_503_fails_after_retries(upstream, settings):
    settings.TOKENFLOW_RETRY_ATTEMPTS = 2
    model = await sync_to_async(custom_model)(upstream.base_url, "bench?status=503")
    row = await run(model)
    assert row.status == "failed" and row.error_code == "upstream_error"
    assert upstream.calls["bench?status=503"] == 2


async def test_400_is_not_retried(upstream):
    model = await sync_to_async(custom_model)(upstream.base_url, "bench?status=400")
    row = await run(model)
    assert row.status == "failed" and row.error_code == "upstream_bad_request"
    assert upstream.calls["bench?status=400"] == 1


async def test_unreachable_upstream_fails_cleanly(settings):
    settings.TOKENFLOW_RETRY_ATTEMPTS = 1
    model = await sync_to_async(custom_model)("http://127.0.0.1:9/v1", "x")
    row = await run(model)
    await clients_close()
    assert row.status == "failed" and row.error_code == "upstream_unreachable"


async def test_closing_the_stream_disconnects_upstream(upstream):
    model = await sync_to_async(custom_model)(upstream.base_url, "bench?chunks=200&gap=0.02")
    generation = await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        params=GenerationParams(),
        api_key=None,
        transport="test",
    )
    async with aclosing(generation_run(generation)) as events:
        async for event in events:
            if event.type == "text":
                break
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "cancelled" and row.output_text == " tok0"
    # The upstream notices the closed connection at its next write (gap 20 ms); wait up to 10 s.
    for _ in range(500):
        if ("disconnected", model.upstream_model) in upstream.log:
            break
        await asyncio.sleep(0.02)
    assert ("disconnected", model.upstream_model) in upstream.log
    assert ("done", model.upstream_model) not in upstream.log


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    provider = OpenAICompatProvider(
        name="groq/llama", provider="groq", api_key_env="GROQ_API_KEY", endpoint={}
    )
    with pytest.raises(ProviderError) as info:
        provider.check_ready()
    assert info.value.status == 503 and info.value.code == "provider_not_configured"
    assert "GROQ_API_KEY" in info.value.message


def test_base_url_precedence(monkeypatch):
    endpoint = {"base_url_env": "OPENAI_BASE_URL", "base_url": "https://api.openai.com/v1"}
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env/v1")
    provider = OpenAICompatProvider(name="m", endpoint=endpoint, base_url=None)
    assert provider._base_url() == "http://env/v1"
    provider = OpenAICompatProvider(name="m", endpoint=endpoint, base_url="http://row/v1")
    assert provider._base_url() == "http://row/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAICompatProvider(name="m", endpoint=endpoint)._base_url() == endpoint["base_url"]


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_request_arguments_skip_unset_values():
    request = ChatRequest(messages=[{"role": "user", "content": "x"}], model="m", temperature=0)
    arguments = OpenAICompatProvider._arguments(request)
    assert arguments == {"model": "m", "messages": request.messages, "temperature": 0}
    assert "OPENAI_API_KEY" not in os.environ


async def test_upstream_401_never_shows_the_provider_key_to_clients(upstream):
    """OpenAI's 401 quotes part of the key; clients get a stable code and a generic text,
    staff get the upstream text with the key masked."""
    from urllib.parse import quote

    leak = "Incorrect API key provided: sk-proj-Xy12********************abcd."
    model = await sync_to_async(custom_model)(
        upstream.base_url, f"bench?chunks=2&gap=0&status=401&message={quote(leak)}"
    )
    row = await run(model)
    assert row.status == "failed" and row.error_code == "upstream_auth_failed"
    assert row.error_message == "The upstream provider refused the gateway's credentials."
    assert "sk-" not in row.error_detail and "Incorrect API key provided" in row.error_detail
    assert row.attempts and all("sk-" not in attempt["error"] for attempt in row.attempts)


def test_chunk_from_event_reads_the_raw_json():
    """Chunks are read from the upstream's JSON as is (no SDK model): text, finish, usage with
    cached tokens, tool-call and logprob deltas without their nulls, empty deltas skipped."""
    from routing.providers.openai_compat import chunk_from_event

    text = chunk_from_event(
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    )
    assert (text.text, text.finish_reason, text.tool_calls, text.usage) == ("hi", None, None, None)
    assert chunk_from_event({"choices": [{"delta": {"role": "assistant"}}]}) is None
    assert chunk_from_event({"choices": [], "usage": None}) is None
    assert chunk_from_event("not an object") is None
    end = chunk_from_event({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    assert (end.text, end.finish_reason) == ("", "stop")
    usage = chunk_from_event(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "total_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    assert usage.usage == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    call = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": None},
    }
    logprob = {"token": "hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}
    delta = chunk_from_event(
        {
            "choices": [
                {
                    "delta": {"content": None, "tool_calls": [call]},
                    "logprobs": {"content": [logprob]},
                    "finish_reason": None,
                }
            ]
        }
    )
    assert delta.tool_calls == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
    ]
    assert delta.logprobs == [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]
    assert delta.text == ""
