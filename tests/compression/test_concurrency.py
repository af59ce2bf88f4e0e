"""The model loads once per process; concurrent compressions neither reload nor interfere;
the async service keeps the event loop free."""

import asyncio
import difflib
import threading

import pytest

from compression.engines import CompressionRequest, FastCompressor
from compression.services import acompression_create
from routing.tokens import count_tokens


@pytest.mark.model
def test_two_threads_compress_at_once_and_the_model_loads_once(long_text, monkeypatch):
    backend = FastCompressor(model="", options={"quantize": "int8"})
    loads = []
    real_load = backend.load

    def counting_load():
        loads.append(threading.get_ident())
        return real_load()

    monkeypatch.setattr(backend, "load", counting_load)
    texts = [long_text[:2500], long_text[2500:5000]]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            request = CompressionRequest(
                text=texts[index], target_tokens=count_tokens(texts[index]) // 2
            )
            results[index] = backend.compress(request)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert len(loads) == 1
    assert backend.load_count == 1
    # Each result belongs to its own text and matches a sequential run (no cross-talk).
    for index, text in enumerate(texts):
        sequential = backend.compress(
            CompressionRequest(text=text, target_tokens=count_tokens(text) // 2)
        )
        similarity = difflib.SequenceMatcher(None, results[index], sequential).ratio()
        assert similarity > 0.9
        assert set(results[index].split()) <= set(text.split())


@pytest.mark.model
@pytest.mark.django_db(transaction=True)
async def test_async_service_runs_off_the_event_loop(fast_compressor, long_text):
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        compression = await acompression_create(text=long_text[:3000], ratio=0.5)
    finally:
        done.set()
        await task
    assert compression.pk is not None
    assert compression.engine == "fast"
    # The model run takes well over a second; a blocked loop would not tick at all.
    assert ticks >= 5
