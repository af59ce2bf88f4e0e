"""/v1/chat/completions in process: the mock backend's tool calls and JSON, the bounds of
every new field, and capability-aware routing (what model "auto" skips and why)."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts.models import ApiKey
from routing.models import Generation
from routing.services.selection import _route
from tests.factories import mock_model, route
from tests.streams import read_body
from tokenflow_site.errors import ApiError

pytestmark = pytest.mark.django_db(transaction=True)

TOOL = {
    "type": "function",
    "function": {
        "name": "book_table",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string"},
                "guests": {"type": "integer", "minimum": 1},
                "when": {"type": "string", "enum": ["lunch", "dinner"]},
            },
        },
    },
}


@pytest.fixture
async def post(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="fields")
    client = AsyncClient()

    async def send(body: dict, path: str = "/v1/chat/completions"):
        return await client.post(
            path,
            data=json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )

    return send


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "book it"}], **fields}


async def test_mock_backend_calls_a_tool_with_arguments_from_its_schema(post):
    await sync_to_async(mock_model)(
        "mock/tools", tool_calls="auto", argument_chunk=5, supports_tools=True
    )
    response = await post(chat("mock/tools", tools=[TOOL], stream=True))
    body = await read_body(response)
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    arguments = '{"restaurant": "mock", "guests": 1, "when": "lunch"}'
    assert deltas[0] == {
        "index": 0,
        "id": "call_mock_0",
        "type": "function",
        "function": {"name": "book_table", "arguments": ""},
    }
    assert "".join(d["function"]["arguments"] for d in deltas) == arguments
    assert len(deltas) == 1 + -(-len(arguments) // 5)  # fragments of 5 characters
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    row = await Generation.objects.aget(model_name="mock/tools")
    assert row.tool_calls == [
        {
            "id": "call_mock_0",
            "type": "function",
            "function": {"name": "book_table", "arguments": arguments},
        }
    ]
    assert row.completion_tokens > 0 and row.output_text == ""


async def test_mock_backend_answers_tool_results_and_json(post):
    await sync_to_async(mock_model)(
        "mock/all",
        tool_calls="auto",
        supports_tools=True,
        supports_json_schema=True,
        supports_json_object=True,
    )
    messages = [
        {"role": "user", "content": "book it"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "book_table", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "booked"}]},
    ]
    response = await post({"model": "mock/all", "messages": messages, "tools": [TOOL]})
    assert response.json()["choices"][0]["message"]["content"] == "Tool results: booked"

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}}
    response = await post(
        chat(
            "mock/all",
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        )
    )
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"ok": True, "n": 0}
    response = await post(chat("mock/all", response_format={"type": "json_object"}))
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"echo": "book it"}


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"tools": [TOOL, TOOL]}, 400, "invalid", "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            400,
            "invalid",
            "tools",
        ),
        ({"tools": [TOOL] * 129}, 400, "invalid", "tools"),
        ({"tool_choice": "required"}, 400, "invalid", "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            400,
            "invalid",
            "tool_choice",
        ),
        ({"response_format": {"type": "yaml"}}, 400, "invalid", "response_format"),
        ({"response_format": {"type": "json_schema"}}, 400, "invalid", "response_format"),
        ({"top_logprobs": 3}, 400, "invalid", "top_logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, 400, "out_of_range", "top_logprobs"),
        ({"n": 9}, 400, "out_of_range", "n"),
        ({"n": 0}, 400, "out_of_range", "n"),
        ({"presence_penalty": 3}, 400, "out_of_range", "presence_penalty"),
        ({f"x{i}": i for i in range(17)}, 400, "too_many_fields", None),
    ],
)
async def test_bad_fields_are_clear_errors(post, fields, status, code, param):
    await sync_to_async(mock_model)("mock/b", supports_tools=True)
    response = await post(chat("mock/b", **fields))
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": []}, "only allowed on assistant"),
        (
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}],
            },
            "only allowed in user",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "not supported",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
            },
            "http(s) URL",
        ),
        ({"role": "assistant", "content": None}, "content is required"),
        ({"role": "user", "content": []}, "non-empty list"),
    ],
)
async def test_bad_messages_name_the_message(post, message, fragment):
    await sync_to_async(mock_model)("mock/m")
    response = await post({"model": "mock/m", "messages": [message]})
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


async def test_images_are_bounded(post, settings):
    settings.TOKENFLOW_MAX_IMAGES = 2
    await sync_to_async(mock_model)("mock/v", supports_vision=True)
    part = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
    response = await post(
        {"model": "mock/v", "messages": [{"role": "user", "content": [part, part, part]}]}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "input_too_large"
    response = await post({"model": "mock/v", "messages": [{"role": "user", "content": [part]}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: [1 image]"


async def test_a_tool_history_to_a_model_without_tools_is_a_400(post):
    await sync_to_async(mock_model)("mock/plain")
    response = await post(
        {
            "model": "mock/plain",
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
        }
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_lacks_capability"


def test_route_skips_models_without_the_capability_and_says_so(db):
    plain = mock_model("mock/r-plain", rank=1)
    tools = mock_model("mock/r-tools", rank=5, supports_tools=True)
    route("booking", plain, priority=100)
    route("booking", tools, priority=50)
    model, fallbacks, info, skipped = _route("booking", ["chat", "tools"])
    assert model == tools and fallbacks == []
    assert skipped == [
        {
            "model": "mock/r-plain",
            "code": "missing_capability",
            "reason": "does not support tools",
            "missing": ["tools"],
            "to": "mock/r-tools",
        }
    ]
    assert _route("booking", ["chat"])[0] == plain


def test_route_falls_back_to_the_best_capable_model_outside_the_route(db):
    plain = mock_model("mock/o-plain", rank=1)
    outside = mock_model("mock/o-vision", rank=7, supports_vision=True)
    route("photos", plain, priority=100)
    model, _fallbacks, info, skipped = _route("photos", ["chat", "vision"])
    assert model == outside and not info.routed
    assert "best-ranked capable model 'mock/o-vision'" in info.reason
    assert skipped[0]["model"] == "mock/o-plain"


def test_no_capable_model_is_a_400(db):
    plain = mock_model("mock/n-plain")
    route("any", plain)
    with pytest.raises(ApiError) as info:
        _route("any", ["chat", "json_schema"])
    assert info.value.status == 400 and info.value.code == "no_capable_model"


def test_admin_shows_capabilities_and_tool_calls(staff_client):
    model = mock_model("mock/admin", supports_tools=True)
    row = Generation.objects.create(
        model=model,
        model_name=model.name,
        provider="mock",
        status="completed",
        tool_calls=[
            {"id": "c9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        ],
    )
    page = staff_client.get("/admin/routing/modelranking/")
    assert page.status_code == 200 and b"supports_tools" in page.content
    change = staff_client.get(f"/admin/routing/modelranking/{model.pk}/change/")
    assert change.status_code == 200 and b"Capabilities" in change.content
    generation = staff_client.get(f"/admin/routing/generation/{row.pk}/change/")
    assert generation.status_code == 200 and b"lookup" in generation.content
    assert staff_client.get("/admin/routing/embedding/").status_code == 200
    assert staff_client.get("/admin/openai_batches/file/").status_code == 200
    assert staff_client.get("/admin/openai_batches/openaibatch/").status_code == 200
    rankings = staff_client.get("/api/model-rankings").json()
    listed = rankings["results"] if isinstance(rankings, dict) else rankings
    assert next(m for m in listed if m["name"] == "mock/admin")["capabilities"] == [
        "chat",
        "tools",
    ]
