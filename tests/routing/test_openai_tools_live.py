"""Tools, structured output and images through /v1/chat/completions: the official `openai`
client against a live TokenFlow (daphne) whose models point at a scripted upstream
(bench/mock_upstream.py, loopback) that records every request body it receives."""

import asyncio
import json
import threading

import openai
import pytest

from accounts.models import ApiKey
from bench.mock_upstream import MockUpstream
from routing.models import Generation, ModelRanking
from tests.factories import mock_model, route

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def upstream():
    """The scripted upstream on its own loop in a thread (daphne reaches it by TCP)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MockUpstream(chunks=3, gap=0)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _client(url: str) -> openai.OpenAI:
    _row, raw = ApiKey.issue(name="tools-live")
    return openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0, timeout=30)


@pytest.fixture
def client(live_server_url):
    with _client(live_server_url) as c:
        yield c


def upstream_model(upstream, name: str, upstream_id: str, **fields) -> ModelRanking:
    return ModelRanking.objects.create(
        name=name,
        provider=ModelRanking.Provider.CUSTOM,
        upstream_model=upstream_id,
        base_url=upstream.base_url,
        **fields,
    )


def last_request(upstream, upstream_id: str) -> dict:
    return [r for r in upstream.requests if r.get("model") == upstream_id][-1]


def test_parallel_tool_calls_non_streaming_round_trip(client, upstream):
    upstream_model(upstream, "up/tools", "bench?tool_calls=2", supports_tools=True)
    completion = client.chat.completions.create(
        model="up/tools",
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    sent = last_request(upstream, "bench?tool_calls=2")
    assert sent["tools"] == [WEATHER, TIME]
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.id for c in calls] == ["call_up_0", "call_up_1"]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"i": 1, "tool": "get_time"}

    row = Generation.objects.get(pk=int(completion.id.removeprefix("chatcmpl-")))
    assert row.status == "completed" and row.finish_reason == "tool_calls"
    assert [c["function"]["name"] for c in row.tool_calls] == ["get_weather", "get_time"]
    assert row.options["tools"] == [WEATHER, TIME]
    assert row.completion_tokens == completion.usage.completion_tokens == 2

    # The follow-up turn: the SDK's own message object, then one `tool` reply per call.
    follow_up = client.chat.completions.create(
        model="up/tools",
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            choice.message,
            {"role": "tool", "tool_call_id": "call_up_0", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_up_1", "content": "14:05"},
        ],
        tools=[WEATHER, TIME],
    )
    assert follow_up.choices[0].message.content == (
        "tool results: call_up_0=18C sunny; call_up_1=14:05"
    )
    sent = upstream.requests[-1]
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant"
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_up_0", "call_up_1"]
    assert assistant["tool_calls"][0]["function"]["arguments"] == calls[0].function.arguments
    assert [m.get("tool_call_id") for m in sent["messages"][2:]] == ["call_up_0", "call_up_1"]


def test_streamed_tool_call_deltas_are_relayed_as_they_come(client, upstream):
    upstream_model(upstream, "up/tools-stream", "bench?tool_calls=2", supports_tools=True)
    stream = client.chat.completions.create(
        model="up/tools-stream",
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[WEATHER, TIME],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    # Each call: a head (index, id, name) and two argument fragments, in order.
    assert [(d.index, d.id) for d in deltas if d.id] == [(0, "call_up_0"), (1, "call_up_1")]
    fragments = [d.function.arguments for d in deltas if d.index == 0 and not d.id]
    assert len(fragments) == 2 and all(fragments)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == 2

    assembled: dict[int, dict] = {}
    for d in deltas:
        call = assembled.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = d.id or call["id"]
        call["name"] += (d.function.name or "") if d.function else ""
        call["arguments"] += (d.function.arguments or "") if d.function else ""
    assert json.loads(assembled[0]["arguments"]) == {"i": 0, "tool": "get_weather"}
    row = Generation.objects.get(pk=int(chunks[0].id.removeprefix("chatcmpl-")))
    assert [c["id"] for c in row.tool_calls] == ["call_up_0", "call_up_1"]
    assert row.tool_calls[0]["function"]["arguments"] == assembled[0]["arguments"]


def test_json_schema_reaches_the_upstream_and_its_answer_comes_back(client, upstream):
    upstream_model(upstream, "up/json", "bench-json", supports_json_schema=True)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    completion = client.chat.completions.create(
        model="up/json",
        messages=[{"role": "user", "content": "A person, please."}],
        response_format=response_format,
        seed=7,
        stop=["\n\n"],
        user="end-user-1",
    )
    sent = last_request(upstream, "bench-json")
    assert sent["response_format"] == response_format
    assert sent["seed"] == 7 and sent["stop"] == ["\n\n"] and sent["user"] == "end-user-1"
    assert json.loads(completion.choices[0].message.content) == {
        "schema": "person",
        "properties": ["age", "name"],
    }


def test_json_schema_to_a_model_without_it_is_a_400(client, upstream):
    upstream_model(upstream, "up/plain", "bench-plain")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="up/plain",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        )
    assert info.value.code == "model_lacks_capability"
    assert "json_schema" in info.value.message and "up/plain" in info.value.message


def test_image_part_reaches_a_vision_model_and_is_refused_without_vision(client, upstream):
    upstream_model(upstream, "up/vision", "bench-vision", supports_vision=True)
    upstream_model(upstream, "up/blind", "bench-blind")
    image = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
        "nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
            ],
        }
    ]
    completion = client.chat.completions.create(model="up/vision", messages=messages)
    assert completion.choices[0].message.content == f"images: 1 first: {image[:40]}"
    sent = last_request(upstream, "bench-vision")
    assert sent["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": image, "detail": "low"},
    }

    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="up/blind", messages=messages)
    assert info.value.code == "model_lacks_capability"
    assert "vision" in info.value.message
    assert len(upstream.requests) == before  # refused before any upstream call


def test_unknown_fields_go_upstream_only_through_the_model_allowlist(client, upstream):
    upstream_model(upstream, "up/allow", "bench-allow", passthrough_fields=["top_k"])
    response = client.chat.completions.with_raw_response.create(
        model="up/allow",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"top_k": 5, "internal_secret": "do-not-leak"},
    )
    sent = last_request(upstream, "bench-allow")
    assert sent["top_k"] == 5 and "internal_secret" not in sent
    assert response.headers["x-tokenflow-ignored-fields"] == "internal_secret"


def test_auto_with_tools_never_picks_a_model_without_tool_support(
    keyword_live_server_url, upstream
):
    """Every route's first choice lacks tools; "auto" must skip it, whatever the category."""
    no_tools = mock_model("mock/no-tools", rank=1)
    capable = upstream_model(
        upstream, "up/auto-tools", "bench?tool_calls=1", supports_tools=True, rank=50
    )
    for category in ("booking", "weather"):
        route(category, no_tools, priority=100, description=category)
        route(category, capable, priority=10, description=category)
    with _client(keyword_live_server_url) as client:
        for prompt in ("booking a table", "weather in Oslo", "something else"):
            response = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}], tools=[WEATHER]
            )
            completion = response.parse()
            assert completion.model == "up/auto-tools"
            assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
            assert "model=up/auto-tools" in response.headers["x-tokenflow-route"]
        # Without tools the same prompt keeps its route's first choice.
        plain = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "booking a table"}]
        )
        assert plain.model == "mock/no-tools"
    rows = Generation.objects.filter(model_name="up/auto-tools").select_related("classification")
    assert rows.count() == 3
    assert not Generation.objects.filter(model_name="mock/no-tools", options__has_key="tools")


def test_legacy_completions_with_the_sdk(client):
    mock_model("mock/legacy", response="alpha beta gamma delta")
    completion = client.completions.create(
        model="mock/legacy", prompt="Say four words:", max_tokens=3, echo=True
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Say four words:alpha beta gamma"  # prompt + answer
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    row = Generation.objects.get(pk=int(completion.id.removeprefix("cmpl-")))
    assert row.input_messages == [{"role": "user", "content": "Say four words:"}]

    default = client.completions.create(model="mock/legacy", prompt=["Go"])
    assert default.choices[0].text == "alpha beta gamma delta"  # 16 tokens by default

    stream = client.completions.create(
        model="mock/legacy", prompt="x", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "alpha beta gamma delta"
    assert chunks[-1].usage.total_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mock/legacy", prompt=["a", "b"])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mock/legacy", prompt="a", suffix="b")
