"""The common request starts its upstream call before its rows are written
(routing.services.generation._prepared_on_loop, StreamPrefetch); a failed insert or a client
gone before the stream ran stops that call and gives the key's stream slot back."""

import asyncio
import time
from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from accounts.ratelimit import rate_limits_in_process
from routing.models import Generation
from routing.providers.mock import MockProvider
from routing.services import generation as service
from routing.services.generation import GenerationParams, GenerationRequest
from routing.services.models import models_cache
from tests.factories import mock_model

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not rate_limits_in_process(), reason="limits in Redis: the general path (a thread hop)"
    ),
]

MESSAGES = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def streams(monkeypatch):
    """Records the upstream calls that start and those that are closed."""
    log = []
    original = MockProvider.stream

    async def stream(self, request):
        log.append("start")
        try:
            async for chunk in original(self, request):
                yield chunk
        finally:
            log.append("closed")

    monkeypatch.setattr(MockProvider, "stream", stream)
    return log


async def cached_model(**options):
    model = await sync_to_async(mock_model)(**options)
    await sync_to_async(models_cache.refresh)([model.name])  # as a request before this one
    return model


def request_for(model) -> GenerationRequest:
    return GenerationRequest(messages=MESSAGES, model=model.name, params=GenerationParams())


async def prepare(model, api_key=None):
    return await service.generation_acreate(
        request=request_for(model), api_key=api_key, transport="test"
    )


async def test_the_upstream_call_starts_before_the_rows_are_written(streams, monkeypatch):
    model = await cached_model()
    seen = []
    persist = service.generation_persist

    def persist_recording(*args, **kwargs):
        deadline = time.monotonic() + 5
        while not streams and time.monotonic() < deadline:  # written after it: never starts
            time.sleep(0.005)
        seen.append(list(streams))
        return persist(*args, **kwargs)

    monkeypatch.setattr(service, "generation_persist", persist_recording)
    prepared = await prepare(model)
    assert seen == [["start"]]  # the call was under way while the row was inserted
    events = [event async for event in prepared.events()]
    assert "".join(e.data["text"] for e in events if e.type == "text") == "Echo: one two three"
    row = await Generation.objects.aget(pk=prepared.generation.pk)
    assert row.status == "completed" and row.ttft_ms is not None and row.started_at is not None
    assert streams == ["start", "closed"]  # one upstream call, used by the stream


async def test_a_model_not_cached_takes_the_general_path(streams, monkeypatch):
    model = await sync_to_async(mock_model)()
    calls = []
    monkeypatch.setattr(service, "_generation_create", lambda **kw: calls.append(1) or None)
    assert await prepare(model) is None  # the general path ran (and returned our None)
    assert calls == [1] and streams == []


async def test_a_failed_insert_stops_the_call_and_gives_the_stream_slot_back(
    streams, monkeypatch, settings
):
    settings.TOKENFLOW_MAX_STREAMS_PER_KEY = 1
    key, _ = await sync_to_async(ApiKey.issue)(name="prefetch")
    model = await cached_model(first_token_delay=5)

    def persist_failing(*args, **kwargs):
        raise RuntimeError("insert failed")

    persist = service.generation_persist
    monkeypatch.setattr(service, "generation_persist", persist_failing)
    with pytest.raises(RuntimeError):
        await prepare(model, api_key=key)
    assert streams == ["start", "closed"]
    assert await Generation.objects.acount() == 0
    monkeypatch.setattr(service, "generation_persist", persist)
    prepared = await prepare(model, api_key=key)  # the key's one stream slot is free again
    async with aclosing(prepared.events()) as events:
        assert (await anext(events)).type == "metadata"


async def test_a_generation_closed_before_it_streams_stops_its_call(streams):
    model = await cached_model(first_token_delay=5)
    prepared = await prepare(model)
    async with aclosing(prepared.events()) as events:
        first = await anext(events)
        assert first.type == "metadata"
    assert streams == ["start", "closed"]


class OpeningProvider:
    """A network-like provider: accepts the request after `accept` seconds (or never)."""

    signals_open = True

    def __init__(self, accept):
        self.accept = accept

    async def stream(self, request):
        if self.accept is not None:
            await asyncio.sleep(self.accept)
            request.opened.set()
        await asyncio.sleep(10)
        yield  # pragma: no cover


@pytest.mark.parametrize(
    "accept, head_start, low, high", [(0.01, 0.5, 0.01, 0.4), (None, 0.05, 0.05, 1.0)]
)
async def test_the_insert_waits_for_the_upstream_to_accept_at_most_a_head_start(
    monkeypatch, accept, head_start, low, high
):
    model = await sync_to_async(mock_model)()
    monkeypatch.setattr(service, "provider_for", lambda model: OpeningProvider(accept))
    monkeypatch.setattr(service.StreamPrefetch, "HEAD_START_SECONDS", head_start)
    prefetch = service.StreamPrefetch(model, service._chat_request(model, MESSAGES, {}, {}, {}))
    started = time.monotonic()
    await prefetch.head_start()
    assert low <= time.monotonic() - started < high
    await prefetch.aclose()
