"""The local provider: queue positions, queue full (503), cancellation, and one real stream."""

import asyncio
import json
import threading
from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts.models import ApiKey
from routing.models import Generation, ModelRanking
from routing.providers.base import ChatRequest, Chunk, ProviderError
from routing.providers.local_hf import LocalHFProvider, local_queue
from routing.services.generation import GenerationParams, generation_prepare, generation_run

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10
REQUEST = ChatRequest(messages=[{"role": "user", "content": "x"}], model="local")


class FakeModel:
    """Stands in for model.generate in the worker thread: one token per `release`."""

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.stopped = threading.Event()

    def generate(self, request, emit, cancelled) -> None:
        try:
            for index in range(3):
                while not self.gate.acquire(timeout=0.01):
                    if cancelled.is_set():
                        return
                emit(Chunk(f"t{index} "))
            emit(Chunk(finish_reason="stop", usage={"prompt_tokens": 1, "completion_tokens": 3}))
        finally:
            self.stopped.set()

    def release(self, tokens: int = 3) -> None:
        for _ in range(tokens):
            self.gate.release()


@pytest.fixture
def fake(monkeypatch, settings):
    settings.TOKENFLOW_LOCAL_CONCURRENCY = 1
    settings.TOKENFLOW_LOCAL_QUEUE_SIZE = 1
    settings.TOKENFLOW_LOCAL_RETRY_AFTER = 7
    model = FakeModel()
    monkeypatch.setattr(LocalHFProvider, "generate", staticmethod(model.generate))
    yield model
    model.release(100)
    assert local_queue().running == 0 or model.stopped.wait(TIMEOUT)


def provider() -> LocalHFProvider:
    return LocalHFProvider(name="local/test")


async def next_chunk(stream) -> Chunk:
    return await asyncio.wait_for(stream.__anext__(), TIMEOUT)


async def test_waiting_request_sees_its_position_then_runs(fake):
    async with aclosing(provider().stream(REQUEST)) as first:
        fake.release(1)
        assert (await next_chunk(first)).text == "t0 "
        async with aclosing(provider().stream(REQUEST)) as second:
            assert (await next_chunk(second)).info == {"queue_position": 1}
            # A third one does not fit: check_ready and stream both refuse with 503.
            with pytest.raises(ProviderError) as info:
                provider().check_ready()
            assert info.value.code == "queue_full" and info.value.status == 503
            assert info.value.retry_after == 7
            fake.release(2)
            assert [c.text async for c in first][:2] == ["t1 ", "t2 "]
            fake.release(3)
            texts = [c.text async for c in second if c.text]
            assert texts == ["t0 ", "t1 ", "t2 "]


async def test_closing_the_stream_stops_the_worker_thread(fake):
    async with aclosing(provider().stream(REQUEST)) as stream:
        fake.release(1)
        await next_chunk(stream)
    assert await asyncio.to_thread(fake.stopped.wait, TIMEOUT)
    for _ in range(500):  # the slot is freed once the thread is done
        if local_queue().running == 0:
            break
        await asyncio.sleep(0.01)
    assert local_queue().running == 0


async def test_leaving_the_queue_frees_the_place(fake):
    async with aclosing(provider().stream(REQUEST)) as first:
        fake.release(1)
        await next_chunk(first)
        async with aclosing(provider().stream(REQUEST)) as second:
            await next_chunk(second)
        assert local_queue().waiting == type(local_queue().waiting)()
        provider().check_ready()  # room again


async def test_queue_full_is_a_503_with_retry_after_over_http(fake):
    _row, raw = await sync_to_async(ApiKey.issue)(name="local")
    await ModelRanking.objects.acreate(name="local/fake", provider="local", upstream_model="x")
    headers = {"Authorization": f"Bearer {raw}"}
    client = AsyncClient()
    body = json.dumps({"model": "local/fake", "prompt": "x"})
    async with aclosing(provider().stream(REQUEST)) as first:
        fake.release(1)
        await next_chunk(first)
        async with aclosing(provider().stream(REQUEST)) as second:
            await next_chunk(second)
            response = await client.post(
                "/api/generate", data=body, content_type="application/json", headers=headers
            )
            assert response.status_code == 503
            assert response["Retry-After"] == "7"
            assert response.json()["error"]["code"] == "queue_full"


@pytest.mark.model
async def test_real_local_model_streams_tokens(settings):
    settings.TOKENFLOW_LOCAL_QUEUE_SIZE = 4
    model = await ModelRanking.objects.acreate(
        name="local/smollm2", provider="local", upstream_model="smollm2"
    )
    generation = await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        params=GenerationParams(max_tokens=12),
        api_key=None,
        transport="test",
    )
    events = [e async for e in generation_run(generation)]
    texts = [e.data["text"] for e in events if e.type == "text"]
    assert events[-1].type == "end", events[-1]
    assert len(texts) >= 3 and "Paris" in "".join(texts)
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status == "completed" and row.completion_tokens <= 12 and row.prompt_tokens > 5


@pytest.mark.model
async def test_real_batched_generation_matches_one_at_a_time(settings):
    """Greedy rows of different prompt lengths in one forward pass (left padding + mask)
    produce exactly what each prompt produces alone; each row stops at its own max_tokens."""
    settings.TOKENFLOW_LOCAL_CONCURRENCY = 3
    settings.TOKENFLOW_LOCAL_QUEUE_SIZE = 4
    settings.TOKENFLOW_LOCAL_BATCH_WINDOW = 0.5  # generous: all three join one batch
    questions = [
        ("What is the capital of France?", 10),
        ("Name a primary colour.", 6),
        ("Give me one word that rhymes with cat, and explain why it rhymes.", 8),
    ]
    batches: list[int] = []
    original = LocalHFProvider.generate_batch

    def counting(jobs):
        batches.append(len(jobs))
        original(jobs)

    async def ask(question: str, tokens: int) -> tuple[str, dict]:
        request = ChatRequest(
            messages=[{"role": "user", "content": question}], model="local", max_tokens=tokens
        )
        text, usage = "", None
        async for chunk in provider().stream(request):
            text += chunk.text
            usage = chunk.usage or usage
        return text, usage

    alone = [await ask(q, n) for q, n in questions]
    LocalHFProvider.generate_batch = staticmethod(counting)
    try:
        together = await asyncio.wait_for(
            asyncio.gather(*(ask(q, n) for q, n in questions)), timeout=120
        )
    finally:
        LocalHFProvider.generate_batch = original
    assert batches == [3]
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [u["completion_tokens"] for _, u in together] == [
        u["completion_tokens"] for _, u in alone
    ]
    assert all(
        u["completion_tokens"] <= n for (_, u), (_, n) in zip(together, questions, strict=True)
    )
