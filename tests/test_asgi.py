"""The production ASGI app: async-native stock middleware and the shared HTTP sync threads."""

import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator

from tokenflow_site.asgi import application
from tokenflow_site.middleware import SharedSyncThreads


async def _get(path: str) -> dict:
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"localhost")])
    try:
        return await communicator.get_response(timeout=30)
    finally:
        await communicator.wait(timeout=30)


@pytest.mark.django_db(transaction=True)
async def test_asgi_app_keeps_the_stock_middleware_behaviour():
    ok = await _get("/healthz")
    assert ok["status"] == 200
    headers = {name.lower(): value for name, value in ok["headers"]}
    assert headers[b"x-frame-options"] == b"DENY"  # XFrameOptionsMiddleware
    assert headers[b"x-content-type-options"] == b"nosniff"  # SecurityMiddleware
    missing = await _get("/api/no-such-route")
    assert missing["status"] == 401  # ApiKeyMiddleware, JSON
    assert b'"error"' in missing["body"]


async def test_shared_sync_threads_pin_a_request_to_one_pool_thread():
    seen: list[list[str]] = []

    async def app(scope, receive, send):
        names = [await sync_to_async(lambda: threading.current_thread().name)() for _ in range(3)]
        seen.append(names)

    wrapped = SharedSyncThreads(app, threads=2)
    for _ in range(4):
        await wrapped({"type": "http"}, None, None)
    assert all(len(set(names)) == 1 for names in seen)  # one thread per request
    assert {names[0] for names in seen} == {"http-sync-0_0", "http-sync-1_0"}  # the pool
    for executor in wrapped.executors:
        executor.shutdown()
