"""POST /api/models/select: classify, route, stream; metadata, fallbacks, NDJSON, bad input."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from routing.models import CategoryRoute, Classification, Generation, ModelRanking
from tests.factories import mock_model, route
from tests.streams import parse_sse

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("keyword_classifier"),
]


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001


@pytest.fixture
def table(settings):
    """code -> mock/coder (then mock/coder-2), poetry -> mock/poet; mock/default otherwise."""
    CategoryRoute.objects.all().delete()  # the seeded table may be there (first test)
    default = mock_model("mock/default", rank=500, response="default answer")
    settings.TOKENFLOW_DEFAULT_MODEL = default.name
    coder = mock_model("mock/coder", response="def f(): pass")
    route("code", coder, priority=90, description="programming")
    route("code", mock_model("mock/coder-2", response="second coder"), priority=50)
    route("poetry", mock_model("mock/poet", response="roses"), description="poems")
    return {"default": default, "coder": coder}


def headers(auth: dict[str, str], **more: str) -> dict[str, str]:
    return {"Authorization": auth["HTTP_AUTHORIZATION"], **more}


async def post(auth, body, **more):
    response = await AsyncClient().post(
        "/api/models/select",
        json.dumps(body),
        content_type="application/json",
        headers=headers(auth, **more),
    )
    if not response.streaming:
        return response, None
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return response, text


async def test_first_event_is_metadata_with_the_selection(auth, table):
    response, text = await post(auth, {"prompt": "write code to sort", "max_tokens": 50})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = parse_sse(text)
    name, meta = events[0]
    assert name == "metadata"
    assert meta["selected_model"] == meta["model"] == "mock/coder"
    assert meta["top_category"] == "code" and meta["confidence"] == pytest.approx(0.9)
    assert {s["category"] for s in meta["scores"]} == {"code", "poetry"}
    assert meta["fallbacks"] == ["mock/coder-2", "mock/default"]
    assert meta["route"]["routed"] and not meta["route"]["default_used"]
    assert "".join(d["text"] for n, d in events if n == "text_chunk") == "def f(): pass"
    assert events[-1][0] == "end_stream"
    header = response["x-tokenflow-route"]
    assert "category=code" in header and "model=mock/coder" in header
    generation = await Generation.objects.select_related("classification", "prompt").aget(
        pk=meta["generation_id"]
    )
    assert generation.classification_id == meta["classification_id"]
    assert generation.status == "completed" and generation.transport == "sse"
    assert generation.prompt_id == generation.classification.prompt_id
    assert generation.parameters == {"max_tokens": 50}


async def test_failing_model_falls_back_to_the_next_route_and_says_so(auth, table):
    await ModelRanking.objects.filter(name="mock/coder").aupdate(options={"fail_before_first": 500})
    _, text = await post(auth, {"prompt": "code it"})
    events = parse_sse(text)
    assert events[0][1]["selected_model"] == "mock/coder"
    fallback = next(d["fallback"] for n, d in events if n == "info")
    assert fallback["from"] == "mock/coder" and fallback["to"] == "mock/coder-2"
    assert "".join(d["text"] for n, d in events if n == "text_chunk") == "second coder"
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.status == "completed" and row.model_name == "mock/coder-2"
    assert {a["model"] for a in row.attempts} == {"mock/coder"} and len(row.attempts) == 3


async def test_every_route_model_failing_ends_with_an_error_event(auth, table):
    await ModelRanking.objects.aupdate(options={"fail_before_first": 503})
    _, text = await post(auth, {"prompt": "code it"})
    events = parse_sse(text)
    assert [n for n, _ in events].count("info") == 2 and events[-1][0] == "error"
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.status == "failed"
    assert {a["model"] for a in row.attempts} == {"mock/coder", "mock/coder-2", "mock/default"}


async def test_a_model_that_cannot_serve_is_skipped_and_reported(auth, table):
    remote = await ModelRanking.objects.acreate(
        name="groq/needs-key", provider="groq", upstream_model="x", rank=1
    )
    await sync_to_async(route)("code", remote, priority=100)
    _, text = await post(auth, {"prompt": "code it"})
    events = parse_sse(text)
    meta = events[0][1]
    assert meta["selected_model"] == "mock/coder"
    assert meta["skipped"][0]["model"] == "groq/needs-key" and meta["skipped"][0]["reason"]
    assert events[1][0] == "info" and events[1][1]["fallback"]["from"] == "groq/needs-key"
    assert events[1][1]["fallback"]["to"] == "mock/coder"


async def test_category_without_route_answers_with_the_default_and_says_so(auth, table):
    body = {"prompt": "astronomy tonight", "possible_categories": ["astronomy", "code"]}
    response, text = await post(auth, body)
    meta = parse_sse(text)[0][1]
    assert meta["selected_model"] == "mock/default" and meta["top_category"] == "astronomy"
    assert meta["route"]["default_used"] and "astronomy" in meta["route"]["reason"]
    assert "routed=false" in response["x-tokenflow-route"]


async def test_ndjson(auth, table):
    response, text = await post(auth, {"prompt": "poetry please"}, Accept="application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    assert response["Content-Type"] == "application/x-ndjson"
    assert lines[0]["metadata"]["selected_model"] == "mock/poet"
    assert lines[0]["metadata"]["top_category"] == "poetry"
    assert "".join(line.get("response", "") for line in lines) == "roses"
    assert lines[-1]["done"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "possible_categories": ["one"]}, "possible_categories"),
        ({"prompt": "x", "possible_categories": ["a", "a"]}, "possible_categories"),
        ({"prompt": "x", "temperature": 5}, "temperature"),
        ({"prompt": "x", "compress": {"ratio": 0}}, "compress.ratio"),
        ({"prompt": "x", "compress": 0.5}, "compress"),
    ],
)
async def test_bad_input_is_400_before_any_stream(auth, table, body, field):
    response, _ = await post(auth, body)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field
    assert not await Generation.objects.aexists()


async def test_no_enabled_model_is_503(auth, table):
    await ModelRanking.objects.aupdate(enabled=False)
    response, _ = await post(auth, {"prompt": "code"})
    assert response.status_code == 503
    assert "enable" in response.json()["error"]["message"].lower()
    assert not await Generation.objects.aexists()


async def test_no_route_model_ready_is_503(auth, settings):
    settings.TOKENFLOW_DEFAULT_MODEL = "groq/needs-key"
    await ModelRanking.objects.aupdate(enabled=False)
    await ModelRanking.objects.acreate(
        name="groq/needs-key", provider="groq", upstream_model="x", rank=1
    )
    response, _ = await post(auth, {"prompt": "x", "possible_categories": ["a", "b"]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert (
        error["code"] == "no_model_available" and error["skipped"][0]["model"] == "groq/needs-key"
    )
    assert await Classification.objects.acount() == 1  # the classification is kept


async def test_get_is_405_and_no_key_is_401(auth):
    response = await AsyncClient().get("/api/models/select", headers=headers(auth))
    assert response.status_code == 405
    response = await AsyncClient().post("/api/models/select", "{}", content_type="application/json")
    assert response.status_code == 401
