"""OpenAI's `n`: one Generation per choice, run concurrently, rendered as choices 0..n-1
(official `openai` client against a live server; rate limits and tool calls in process)."""

import json
import time

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts.models import ApiKey
from routing.models import Generation
from tests.factories import mock_model
from tests.streams import read_body

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(live_server_url):
    _row, raw = ApiKey.issue(name="openai-n")
    with openai.OpenAI(
        base_url=f"{live_server_url}/v1", api_key=raw, max_retries=0, timeout=30
    ) as c:
        yield c


def test_non_streaming_n_gives_n_choices_and_rows(client):
    model = mock_model("mock/n3", response="alpha beta gamma")
    raw = client.chat.completions.with_raw_response.create(
        model=model.name, messages=HI, n=3, max_tokens=10
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"alpha beta gamma"}
    assert {c.finish_reason for c in completion.choices} == {"stop"}
    rows = list(Generation.objects.filter(model_name="mock/n3").order_by("pk"))
    assert len(rows) == 3 and {r.status for r in rows} == {"completed"}
    assert len({r.prompt_id for r in rows}) == 1  # one Prompt, n generations
    ids = raw.headers["x-tokenflow-generation-ids"].split(",")
    assert ids == [str(r.pk) for r in rows]
    assert completion.id == f"chatcmpl-{rows[0].pk}"
    assert completion.usage.completion_tokens == sum(r.completion_tokens for r in rows) == 9
    assert completion.usage.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streaming_n_interleaves_indexes_with_one_finish_each(client):
    model = mock_model("mock/n2", response="w1 w2 w3 w4", token_delay=0.05)
    started = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model=model.name,
            messages=HI,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    elapsed = time.monotonic() - started
    with_choices = [c for c in chunks if c.choices]
    order = [c.choices[0].index for c in with_choices]
    for index in (0, 1):
        mine = [c.choices[0] for c in with_choices if c.choices[0].index == index]
        assert "".join(ch.delta.content or "" for ch in mine) == "w1 w2 w3 w4"
        assert mine[0].delta.role == "assistant"
        assert [ch.finish_reason for ch in mine if ch.finish_reason] == ["stop"]
        assert mine[-1].finish_reason == "stop"
    # Concurrent, not one after the other: index 1 starts before index 0 is done.
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)
    assert elapsed < 2 * 4 * 0.05 + 1.5
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 8
    assert Generation.objects.filter(model_name="mock/n2", status="completed").count() == 2


def test_n_beyond_the_limit_is_a_400_naming_n(client):
    mock_model("mock/n9")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock/n9", messages=HI, n=9)
    assert info.value.param == "n" and info.value.code == "out_of_range"
    assert "8" in info.value.message
    assert not Generation.objects.filter(model_name="mock/n9").exists()


def test_legacy_completions_n(client):
    model = mock_model("mock/legacy-n", response="one two")
    completion = client.completions.create(model=model.name, prompt="x", n=2, echo=True)
    assert [c.index for c in completion.choices] == [0, 1]
    assert {c.text for c in completion.choices} == {"xone two"}
    assert completion.usage.completion_tokens == 4
    chunks = list(client.completions.create(model=model.name, prompt="x", n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(ch.text for ch in mine) == "one two"
        assert [ch.finish_reason for ch in mine if ch.finish_reason] == ["stop"]
    assert Generation.objects.filter(model_name="mock/legacy-n").count() == 4


def test_disconnect_cancels_every_choice(client, live_server_url):
    model = mock_model("mock/n-stall", response="w1 w2 w3", token_delay=0.01, stall_after=1)
    body = {"model": model.name, "messages": HI, "n": 3, "stream": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{live_server_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {client.api_key}"},
        ) as response,
    ):
        seen: set[int] = set()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen.add(json.loads(line[6:])["choices"][0]["index"])
            if seen == {0, 1, 2}:
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = list(Generation.objects.filter(model_name="mock/n-stall"))
        if len(rows) == 3 and {r.status for r in rows} == {"cancelled"}:
            break
        time.sleep(0.05)
    assert [(r.status, r.output_text) for r in rows] == [("cancelled", "w1")] * 3


@pytest.fixture
async def post(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="n-in-process")
    client = AsyncClient()

    async def send(body: dict):
        return await client.post(
            "/v1/chat/completions",
            data=json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )

    return send


async def test_every_choice_takes_a_stream_slot(post, settings):
    """n choices are n streams of the key: beyond its cap the request is a 429 and the
    choices already prepared are closed (their slots given back)."""
    settings.TOKENFLOW_MAX_STREAMS_PER_KEY = 2
    await sync_to_async(mock_model)("mock/n-slots", response="a b")
    refused = await post({"model": "mock/n-slots", "messages": HI, "n": 3})
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["code"] == "too_many_streams"
    rows = [r async for r in Generation.objects.filter(model_name="mock/n-slots")]
    assert [r.status for r in rows] == ["cancelled", "cancelled"]
    allowed = await post({"model": "mock/n-slots", "messages": HI, "n": 2})
    assert allowed.status_code == 200, allowed.content
    assert [c["index"] for c in allowed.json()["choices"]] == [0, 1]


async def test_tool_calls_per_choice(post):
    await sync_to_async(mock_model)("mock/n-tools", tool_calls="auto", supports_tools=True)
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    response = await post({"model": "mock/n-tools", "messages": HI, "n": 2, "tools": [tool]})
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for choice in choices:
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    streamed = await post(
        {"model": "mock/n-tools", "messages": HI, "n": 2, "tools": [tool], "stream": True}
    )
    body = await read_body(streamed)
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    finishes = [
        (c["choices"][0]["index"], c["choices"][0]["finish_reason"])
        for c in chunks
        if c["choices"][0]["finish_reason"]
    ]
    assert sorted(finishes) == [(0, "tool_calls"), (1, "tool_calls")]
    assert body.rstrip().endswith("data: [DONE]")


async def test_a_failing_choice_fails_the_request_and_cancels_the_others(post):
    await sync_to_async(mock_model)("mock/n-fail", response="a b c", fail_after=1)
    response = await post({"model": "mock/n-fail", "messages": HI, "n": 2})
    assert response.status_code == 502, response.content
    statuses = {r.status async for r in Generation.objects.filter(model_name="mock/n-fail")}
    assert "failed" in statuses and statuses <= {"failed", "cancelled"}
