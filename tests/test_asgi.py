"""The production ASGI app: async-native stock middleware and the shared HTTP sync threads."""

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator

from tokenflow_site.asgi import application
from tokenflow_site.middleware import EarlyBodyEnd, SharedSyncThreads


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


async def test_early_body_end_ends_the_response_at_the_empty_chunk_and_hides_the_header():
    """The server sees the final body message at the empty chunk and nothing after; a
    disconnect it reports once the response is complete (as uvicorn does) does not reach
    the app, whose work after the end still runs."""
    sent, after_end = [], []
    complete = asyncio.Event()

    async def app(scope, receive, send):
        headers = [(b"Content-Type", b"text/event-stream"), (b"X-Tokenflow-Body-Ends-Early", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        listen = asyncio.ensure_future(receive())
        await asyncio.sleep(0.05)  # the final write
        assert not listen.done()  # the disconnect was held back
        after_end.append("written")
        await send({"type": "http.response.body", "body": b""})
        listen.cancel()

    async def server_send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    async def server_receive():
        await complete.wait()
        return {"type": "http.disconnect"}

    await EarlyBodyEnd(app)({"type": "http"}, server_receive, server_send)
    assert sent[0]["headers"] == [(b"Content-Type", b"text/event-stream")]
    assert [m.get("body") for m in sent[1:]] == [b"data: [DONE]\n\n", b""]
    assert not sent[-1].get("more_body") and after_end == ["written"]


async def test_early_body_end_without_the_header_changes_nothing():
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"x"})

    async def server_send(message):
        sent.append(message)

    await EarlyBodyEnd(app)({"type": "http"}, None, server_send)
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"", True), (b"x", None)]


@pytest.mark.django_db(transaction=True)
async def test_a_chat_stream_ends_for_its_client_before_the_row_is_final(api_key):
    """Through the production app: [DONE] and the end of the body come first, the completed
    row right after, in the same request (nothing is lost, the client does not wait)."""
    import json

    from routing.models import Generation
    from tests.factories import mock_model

    model = await sync_to_async(mock_model)()
    body = json.dumps(
        {"model": model.name, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    ).encode()
    status_at_end = []
    complete = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and not message.get("more_body"):
            row = await Generation.objects.aget()
            status_at_end.append(row.status)
            complete.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80),
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {api_key[1]}".encode())],
    }  # fmt: skip
    await application(scope, receive, send)
    assert status_at_end == ["streaming"]
    row = await Generation.objects.aget()
    assert row.status == "completed" and row.output_text and row.cost_usd is not None
