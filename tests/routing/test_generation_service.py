"""The generation service with the mock provider: persistence, retries, fallback, cancel."""

import asyncio
from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async

from routing.models import Generation
from routing.services.generation import (
    GenerationParams,
    generation_complete,
    generation_prepare,
    generation_run,
)
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "one two three four"}]


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001


async def prepare(model, **params):
    return await sync_to_async(generation_prepare)(
        model=model,
        messages=MESSAGES,
        params=GenerationParams(**params),
        api_key=None,
        transport="test",
    )


async def collect(generation, **kwargs):
    return [event async for event in generation_run(generation, **kwargs)]


async def test_completed_generation_is_persisted_with_events_in_order():
    generation = await prepare(await sync_to_async(mock_model)())
    events = await collect(generation)
    assert [e.type for e in events] == ["metadata"] + ["text"] * 5 + ["end"]
    assert "".join(e.data["text"] for e in events if e.type == "text") == "Echo: one two three four"
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "completed" and row.output_text == "Echo: one two three four"
    assert row.completion_tokens == 5 and row.ttft_ms is not None and row.finish_reason == "stop"


async def test_max_tokens_truncates_with_length_finish():
    generation = await prepare(await sync_to_async(mock_model)(), max_tokens=2)
    events = await collect(generation)
    assert events[-1].data["finish_reason"] == "length"


async def test_mid_stream_failure_is_an_error_and_a_failed_row():
    generation = await prepare(await sync_to_async(mock_model)(fail_after=2))
    events = await collect(generation)
    assert events[-1].type == "error" and [e.type for e in events].count("text") == 2
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "failed" and row.output_text == "Echo: one"


async def test_retryable_error_before_first_token_is_retried():
    model = await sync_to_async(mock_model)(fail_before_first=503, fail_times=2)
    row = await generation_complete(await prepare(model))
    assert row.status == "completed" and len(row.attempts) == 2


async def test_fallback_moves_to_next_model_before_first_token():
    broken = await sync_to_async(mock_model)(fail_before_first=500)
    spare = await sync_to_async(mock_model)(response="from spare")
    events = await collect(await prepare(broken), fallbacks=[spare])
    info = [e for e in events if e.type == "info"]
    assert info and info[0].data["fallback"]["to"] == spare.name
    row = await Generation.objects.aget(pk=events[0].data["generation_id"])
    assert row.status == "completed" and row.model_name == spare.name
    assert row.output_text == "from spare" and len(row.attempts) == 3


async def test_closing_the_stream_cancels_and_keeps_partial_text():
    generation = await prepare(await sync_to_async(mock_model)(token_delay=0.01, stall_after=2))
    async with aclosing(generation_run(generation)) as events:
        seen = 0
        async for event in events:
            seen += event.type == "text"
            if seen == 2:
                break
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "cancelled" and row.output_text == "Echo: one"


async def test_task_cancellation_is_persisted():
    generation = await prepare(await sync_to_async(mock_model)(token_delay=0.01, stall_after=1))
    task = asyncio.create_task(collect(generation))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "cancelled" and row.output_text == "Echo:"
