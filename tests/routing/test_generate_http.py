"""POST /api/generate (SSE and NDJSON), bad input, the generations API and /metrics."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application
from django.test import AsyncClient

from accounts.models import ApiKey
from routing.models import Generation, ModelRanking
from tests.factories import mock_model
from tests.streams import parse_sse, read_body

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def key(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="http")
    return raw


class KeyClient:
    """AsyncClient that sends the API key on every request."""

    def __init__(self, raw: str) -> None:
        self.raw, self.inner = raw, AsyncClient()

    def _headers(self, extra: dict) -> dict:
        return {"Authorization": f"Bearer {self.raw}", **extra.pop("headers", {})}

    async def get(self, path, **extra):
        return await self.inner.get(path, headers=self._headers(extra), **extra)

    async def post(self, path, **extra):
        return await self.inner.post(path, headers=self._headers(extra), **extra)


@pytest.fixture
def client(key):
    return KeyClient(key)


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001


async def post(client, body, **extra):
    return await client.post(
        "/api/generate", data=json.dumps(body), content_type="application/json", **extra
    )


async def test_sse_events_in_order_and_persisted(client):
    model = await sync_to_async(mock_model)("mock/sse", response="Hello streaming world")
    response = await post(client, {"model": model.name, "prompt": "hi", "temperature": 0.5})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["X-Accel-Buffering"] == "no" and response["Cache-Control"] == "no-cache"
    events = parse_sse(await read_body(response))
    names = [name for name, _ in events]
    assert names == ["metadata", "text_chunk", "text_chunk", "text_chunk", "end_stream"]
    assert events[0][1]["model"] == "mock/sse" and events[0][1]["provider"] == "mock"
    assert "".join(data["text"] for name, data in events if name == "text_chunk") == (
        "Hello streaming world"
    )
    end = events[-1][1]
    assert end["finish_reason"] == "stop" and end["usage"]["completion_tokens"] == 3
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.status == "completed" and row.output_text == "Hello streaming world"
    assert row.transport == "sse" and row.parameters == {"temperature": 0.5}
    assert row.input_messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("how", ["accept", "query"])
async def test_ndjson_lines(client, how):
    model = await sync_to_async(mock_model)(response="a b")
    url_extra = {"headers": {"Accept": "application/x-ndjson"}} if how == "accept" else {}
    path = "/api/generate" + ("?format=ndjson" if how == "query" else "")
    response = await client.post(
        path,
        data=json.dumps({"model": model.name, "messages": [{"role": "user", "content": "x"}]}),
        content_type="application/json",
        **url_extra,
    )
    assert response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in (await read_body(response)).splitlines()]
    assert [line.get("response") for line in lines[1:-1]] == ["a", " b"]
    assert lines[-1]["done"] is True and lines[-1]["usage"]["completion_tokens"] == 2
    row = await Generation.objects.aget(pk=lines[-1]["generation_id"])
    assert row.status == "completed" and row.transport == "ndjson"


async def test_mid_stream_fault_is_an_error_event_and_failed_row(client):
    model = await sync_to_async(mock_model)(response="one two three four", fail_after=2)
    events = parse_sse(await read_body(await post(client, {"model": model.name, "prompt": "x"})))
    assert [n for n, _ in events] == ["metadata", "text_chunk", "text_chunk", "error"]
    assert events[-1][1]["code"] == "upstream_error"
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.status == "failed" and row.output_text == "one two"


async def test_retry_before_first_token_is_invisible_to_the_client(client):
    model = await sync_to_async(mock_model)(response="ok", fail_before_first=429, fail_times=1)
    events = parse_sse(await read_body(await post(client, {"model": model.name, "prompt": "x"})))
    assert [n for n, _ in events] == ["metadata", "text_chunk", "end_stream"]
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.status == "completed" and row.attempts[0]["code"] == "rate_limited"


async def test_client_disconnect_cancels_and_keeps_partial_text(key):
    """Drive the real ASGI app and send http.disconnect after two text chunks."""
    model = await sync_to_async(mock_model)(response="w1 w2 w3 w4", token_delay=0.01, stall_after=2)
    body = json.dumps({"model": model.name, "prompt": "x"}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/generate",
        "raw_path": b"/api/generate",
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
        ],
    }
    gone = asyncio.Event()
    sent: list[bytes] = []
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))
            if b"".join(sent).count(b"event: text_chunk") == 2:
                gone.set()

    await asyncio.wait_for(get_asgi_application()(scope, receive, send), timeout=30)
    text = b"".join(sent).decode()
    generation_id = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])["generation_id"]
    row = await Generation.objects.aget(pk=generation_id)
    assert row.status == "cancelled" and row.output_text == "w1 w2"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "x"}, 400, "required"),
        (
            {"model": "M", "prompt": "x", "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid",
        ),
        ({"model": "M"}, 400, "required"),
        ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ({"model": "M", "prompt": "x", "temperature": 3}, 400, "out_of_range"),
        ({"model": "M", "prompt": "x", "top_p": -0.1}, 400, "out_of_range"),
        ({"model": "M", "prompt": "x", "max_tokens": 0}, 400, "out_of_range"),
        ({"model": "M", "messages": [{"role": "bot", "content": "x"}]}, 400, "invalid"),
        ({"model": "M", "messages": "hello"}, 400, "invalid_type"),
    ],
)
async def test_bad_input_is_json_before_the_stream(client, body, status, code):
    await sync_to_async(mock_model)("M")
    response = await post(client, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert await Generation.objects.acount() == 0


async def test_unknown_model_lists_available_ones(client):
    await sync_to_async(mock_model)("mock/on")
    await sync_to_async(mock_model)("mock/off", enabled=False)
    response = await post(client, {"model": "mock/off", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["available_models"] == ["mock/on"]


async def test_oversized_input_is_413(client, settings):
    settings.TOKENFLOW_MAX_INPUT_CHARS = 10
    await sync_to_async(mock_model)("M")
    response = await post(client, {"model": "M", "prompt": "x" * 11})
    assert response.status_code == 413 and response.json()["error"]["code"] == "input_too_large"


async def test_malformed_json_and_wrong_method(client):
    response = await client.post("/api/generate", data="{", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert (await client.get("/api/generate")).status_code == 405


async def test_provider_without_key_is_503_without_naming_server_variables(
    client, monkeypatch, caplog
):
    """Clients get a stable code and a generic message; staff find the variable in the log."""
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    await ModelRanking.objects.acreate(name="groq/x", provider="groq", upstream_model="x")
    response = await post(client, {"model": "groq/x", "prompt": "x"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "provider_not_configured"
    assert "GROQ_API_KEY" not in error["message"] and "groq/x" in error["message"]
    assert "GROQ_API_KEY" in caplog.text


async def test_requires_an_api_key():
    response = await AsyncClient().post("/api/generate", data="{}", content_type="application/json")
    assert response.status_code == 401


async def test_generations_list_filters_and_detail(client, key):
    ok = await sync_to_async(mock_model)("mock/ok", response="fine")
    bad = await sync_to_async(mock_model)("mock/bad", fail_after=0)
    for model in (ok, ok, bad):
        await read_body(await post(client, {"model": model.name, "prompt": "x"}))
    listing = (await client.get("/api/generations")).json()
    assert listing["count"] == 3
    failed = (await client.get("/api/generations?status=failed")).json()
    assert [g["model"] for g in failed["results"]] == ["mock/bad"]
    by_model = (await client.get("/api/generations?model=mock/ok&limit=1")).json()
    assert by_model["count"] == 2 and len(by_model["results"]) == 1 and by_model["next"]
    assert (await client.get("/api/generations?provider=openai")).json()["count"] == 0
    first = by_model["results"][0]
    detail = (await client.get(f"/api/generations/{first['id']}")).json()
    assert detail["output_text"] == "fine" and detail["ttft_ms"] is not None
    # Another key sees none of them.
    _row, other = await sync_to_async(ApiKey.issue)(name="other")
    stranger = KeyClient(other)
    assert (await stranger.get(f"/api/generations/{first['id']}")).status_code == 404


async def test_metrics_count_generations(client):
    model = await sync_to_async(mock_model)(response="m")
    await read_body(await post(client, {"model": model.name, "prompt": "x"}))
    text = (await AsyncClient().get("/metrics")).content.decode()
    assert 'tokenflow_generations_total{provider="mock",status="completed"}' in text
    assert "tokenflow_time_to_first_token_seconds_bucket" in text
    assert "tokenflow_streams_in_flight" in text


async def test_metrics_can_be_private(settings):
    settings.TOKENFLOW_METRICS_PUBLIC = False
    assert (await AsyncClient().get("/metrics")).status_code == 401  # no credentials


async def test_sse_concurrent_streams_all_complete(client):
    model = await sync_to_async(mock_model)(response="a b c", token_delay=0.005)

    async def one():
        return parse_sse(await read_body(await post(client, {"model": model.name, "prompt": "x"})))

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert all(events[-1][0] == "end_stream" for events in results)
