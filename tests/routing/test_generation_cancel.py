"""POST /api/generations/<id>/cancel: a flag any process can set, read at checkpoints by
the process streaming the generation (its cross-process test: tests/scale/)."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache

from routing.models import Generation
from routing.services.generation import GenerationParams, generation_prepare, generation_run
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_checkpoints(settings):
    settings.TOKENFLOW_CHECKPOINT_SECONDS = 0.05
    cache.clear()


@pytest.fixture
def api_key(transactional_db):
    from accounts.models import ApiKey

    return ApiKey.issue(name="cancel")


@pytest.fixture
def async_client():
    from django.test import AsyncClient

    return AsyncClient()


async def prepare(model, api_key=None):
    return await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": " ".join(["word"] * 200)}],
        params=GenerationParams(),
        api_key=api_key,
        transport="test",
    )


async def test_a_cancel_request_ends_the_stream_as_cancelled(async_client, api_key):
    model = await sync_to_async(mock_model)(token_delay=0.02)
    generation = await prepare(model, api_key[0])
    events = []

    async def consume():
        async for event in generation_run(generation):
            events.append(event)

    task = asyncio.create_task(consume())
    while sum(e.type == "text" for e in events) < 5:
        await asyncio.sleep(0.01)
    response = await async_client.post(
        f"/api/generations/{generation.pk}/cancel",
        headers={"Authorization": f"Bearer {api_key[1]}"},
    )
    assert response.status_code == 202 and response.json()["id"] == generation.pk
    await asyncio.wait_for(task, 5)
    texts = sum(e.type == "text" for e in events)
    assert events[-1].type == "end" and events[-1].data["finish_reason"] == "cancelled"
    assert texts < 150  # stopped early, not run to the end (201 tokens)
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "cancelled" and row.error_code == "cancelled"
    assert row.output_text == "".join(e.data["text"] for e in events if e.type == "text")
    # It ended: a second cancel is a 409.
    again = await async_client.post(
        f"/api/generations/{generation.pk}/cancel",
        headers={"Authorization": f"Bearer {api_key[1]}"},
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_running"


async def test_someone_elses_generation_is_a_404(async_client, api_key):
    from accounts.models import ApiKey

    other, _ = await sync_to_async(ApiKey.issue)(name="other")
    generation = await prepare(await sync_to_async(mock_model)(), other)
    response = await async_client.post(
        f"/api/generations/{generation.pk}/cancel",
        headers={"Authorization": f"Bearer {api_key[1]}"},
    )
    assert response.status_code == 404
    assert cache.get(f"generation-cancel:{generation.pk}") is None


def test_a_broken_cache_is_not_asked_again_for_a_while(monkeypatch):
    from routing.services import cancel

    calls = []

    def broken(key):
        calls.append(key)
        raise ConnectionError("redis down")

    monkeypatch.setattr(cancel, "_cache_down_until", 0.0)
    monkeypatch.setattr(cancel.cache, "get", broken)
    assert cancel.generation_cancel_requested(1) is False
    assert cancel.generation_cancel_requested(2) is False
    assert calls == ["generation-cancel:1"]  # the second read skipped the cache
