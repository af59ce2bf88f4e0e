"""model "auto" and the `compress` option on every generation transport."""

import json

import openai
import pytest
from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from compression.models import Compression
from routing.models import Classification, Generation
from tests.factories import mock_model, route
from tests.routing.test_generate_http import KeyClient
from tests.streams import parse_sse, read_body

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def client(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="auto")
    return KeyClient(raw)


@pytest.fixture
async def routes(transactional_db):
    """maths -> a broken model then a working one; poems -> its own model."""

    def build():
        broken = mock_model("mock/maths-broken", fail_before_first=500)
        maths = mock_model("mock/maths", response="42")
        poems = mock_model("mock/poems", response="roses are red")
        route("maths", broken, priority=100, description="arithmetic, algebra, equations")
        route("maths", maths, priority=50, description="arithmetic, algebra, equations")
        route("poems", poems, description="poetry, rhymes, sonnets, haiku")

    await sync_to_async(build)()


async def post(client, body, **extra):
    return await client.post(
        "/api/generate", data=json.dumps(body), content_type="application/json", **extra
    )


async def test_generate_auto_routes_by_classification(client, routes, keyword_classifier):
    response = await post(client, {"model": "auto", "prompt": "some poems please"})
    assert response.status_code == 200
    assert "model=mock/poems" in response["x-tokenflow-route"]
    events = parse_sse(await read_body(response))
    metadata = events[0][1]
    assert metadata["selected_model"] == "mock/poems" and metadata["top_category"] == "poems"
    text = "".join(data["text"] for name, data in events if name == "text_chunk")
    assert text == "roses are red"
    row = await Generation.objects.select_related("classification").aget(
        pk=metadata["generation_id"]
    )
    assert row.classification.top_category == "poems"
    assert row.prompt_id == row.classification.prompt_id


async def test_generate_auto_falls_back_through_the_route(client, routes, keyword_classifier):
    response = await post(client, {"model": "auto", "prompt": "maths homework"})
    events = parse_sse(await read_body(response))
    assert events[0][1]["selected_model"] == "mock/maths-broken"
    fallback = next(data["fallback"] for name, data in events if name == "info")
    assert fallback == {
        "from": "mock/maths-broken",
        "to": "mock/maths",
        "reason": "The upstream provider failed.",
        "code": "upstream_error",
    }
    end = events[-1][1]
    row = await Generation.objects.aget(pk=end["generation_id"])
    assert row.status == "completed" and row.model_name == "mock/maths"
    assert row.output_text == "42" and {a["model"] for a in row.attempts} == {"mock/maths-broken"}


async def test_auto_with_no_enabled_model_is_503(client, keyword_classifier):
    response = await post(client, {"model": "auto", "prompt": "anything"})
    assert response.status_code == 503
    assert not await Generation.objects.aexists()


async def test_bad_compress_option_is_400_naming_the_field(client):
    model = await sync_to_async(mock_model)()
    response = await post(client, {"model": model.name, "prompt": "x", "compress": {"ratio": 2}})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "compress.ratio"
    assert not await Generation.objects.aexists()


@pytest.mark.model
async def test_generate_with_compress_sends_the_compressed_prompt(client):
    model = await sync_to_async(mock_model)()  # echoes what it receives
    text = (
        "The quarterly report says revenue grew in every region. " * 12
        + "The launch code is ZETA-7781. "
        + "Analysts expect the growth to continue into next year. " * 12
    )
    response = await post(
        client,
        {
            "model": model.name,
            "prompt": text,
            "compress": {"ratio": 0.5, "force_tokens": ["ZETA-7781"]},
        },
    )
    assert response.status_code == 200
    events = parse_sse(await read_body(response))
    row = await Generation.objects.select_related("compression").aget(
        pk=events[-1][1]["generation_id"]
    )
    compression = row.compression
    assert compression is not None and compression.prompt_id == row.prompt_id
    assert compression.compressed_tokens < 0.7 * compression.original_tokens
    sent = row.input_messages[-1]["content"]
    assert sent == compression.compressed_text and "ZETA-7781" in sent
    assert row.output_text == f"Echo: {sent}".rstrip()
    assert await Compression.objects.acount() == 1


@pytest.mark.model
def test_openai_client_model_auto(live_server_url):
    """The official client, unchanged, with model "auto" (real MiniLM in the live server)."""
    cooking = mock_model("mock/cook", response="Bake it for 50 minutes.")
    space = mock_model("mock/space", response="Jupiter.")
    route("cooking", cooking, description="recipes, baking, ingredients, kitchen, meals")
    route("astronomy", space, description="planets, stars, galaxies, telescopes, orbits")
    _row, raw = ApiKey.issue(name="openai-auto")
    with openai.OpenAI(
        base_url=f"{live_server_url}/v1", api_key=raw, max_retries=0, timeout=60
    ) as client:
        raw_response = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "How long should I bake banana bread?"}],
        )
        completion = raw_response.parse()
        assert completion.model == "mock/cook"
        assert completion.choices[0].message.content == "Bake it for 50 minutes."
        assert "category=cooking" in raw_response.headers["x-tokenflow-route"]
        stream = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Which planet has the most moons?"}],
            stream=True,
        )
        chunks = list(stream)
    assert {c.model for c in chunks} == {"mock/space"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Jupiter."
    assert Classification.objects.filter(top_category="astronomy").exists()
