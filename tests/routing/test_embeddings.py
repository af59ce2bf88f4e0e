"""/v1/embeddings: the official client against the live server with the real MiniLM, and in
process with the mock backend and a scripted upstream (float/base64, usage, persistence,
bounds, capability errors)."""

import asyncio
import base64
import hashlib
import json

import numpy as np
import openai
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts.models import ApiKey
from bench.mock_upstream import MockUpstream
from routing.models import Embedding, ModelRanking
from routing.providers.mock import hash_vector
from routing.providers.openai_compat import clients_close
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)

TEXTS = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Quarterly revenue grew by 12 percent.",
]


def minilm_row() -> ModelRanking:
    return ModelRanking.objects.get_or_create(
        name="local/minilm",
        defaults={
            "provider": ModelRanking.Provider.LOCAL_EMBEDDING,
            "upstream_model": "all-MiniLM-L6-v2",
            "supports_chat": False,
            "supports_embeddings": True,
        },
    )[0]


def minilm_direct(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 computed here with plain transformers (sentence-transformers'
    recipe: 256-token windows, mean pooling over the attention mask, L2 normalisation)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tokenflow_site.assets import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.model
def test_sdk_embeddings_from_local_minilm_match_minilm_computed_directly(live_server_url):
    minilm_row()
    _row, raw = ApiKey.issue(name="embed-live")
    with openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=raw, max_retries=0) as client:
        # The SDK asks for base64 unless told otherwise and decodes it itself.
        response = client.embeddings.create(model="local/minilm", input=TEXTS)
        floats = client.embeddings.create(
            model="local/minilm", input=TEXTS[0], encoding_format="float"
        )
    vectors = np.array([item.embedding for item in response.data])
    expected = minilm_direct(TEXTS)
    assert vectors.shape == (3, 384)
    cosines = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1)
    assert cosines.min() > 0.9999
    assert np.allclose(floats.data[0].embedding, expected[0], atol=1e-5)
    # The paraphrase is nearer than the unrelated sentence: real semantics, not noise.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert response.model == "local/minilm" and response.usage.prompt_tokens > 10

    record = Embedding.objects.filter(model_name="local/minilm").order_by("id").first()
    assert record.status == "completed" and record.input_count == 3
    assert record.input_sha256[0] == hashlib.sha256(TEXTS[0].encode()).hexdigest()
    assert record.vectors is None and record.dimensions == 384


@pytest.fixture
async def post(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="embed")
    client = AsyncClient()

    async def send(body: dict):
        return await client.post(
            "/v1/embeddings",
            data=json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )

    send.raw = raw
    return send


async def test_mock_embeddings_float_and_base64_agree_and_are_persisted(post, settings):
    settings.TOKENFLOW_EMBEDDINGS_STORE_VECTORS = True
    await sync_to_async(mock_model)("mock/embed", supports_embeddings=True, dimensions=6)
    floats = (await post({"model": "mock/embed", "input": ["a b", "c"]})).json()
    encoded = await post(
        {"model": "mock/embed", "input": ["a b", "c"], "encoding_format": "base64"}
    )
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert floats["data"][0]["embedding"] == pytest.approx(hash_vector("a b", 6))
    decoded = np.frombuffer(base64.b64decode(encoded.json()["data"][1]["embedding"]), "<f4")
    assert np.allclose(decoded, floats["data"][1]["embedding"], atol=1e-6)
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    record = await Embedding.objects.aget(pk=int(encoded["x-tokenflow-embedding-id"]))
    assert record.encoding_format == "base64" and record.vectors[1] == pytest.approx(
        floats["data"][1]["embedding"]
    )
    # Read back through the API, by its owner only.
    client = AsyncClient()
    mine = await client.get(
        f"/api/embeddings/{record.pk}", headers={"Authorization": f"Bearer {post.raw}"}
    )
    assert mine.status_code == 200 and mine.json()["input_count"] == 2
    _row, other = await sync_to_async(ApiKey.issue)(name="other")
    theirs = await client.get(
        f"/api/embeddings/{record.pk}", headers={"Authorization": f"Bearer {other}"}
    )
    assert theirs.status_code == 404


async def test_upstream_embeddings_go_through_the_provider_layer(post):
    server = MockUpstream()
    port = await server.start()
    try:
        await ModelRanking.objects.acreate(
            name="up/embed",
            provider=ModelRanking.Provider.CUSTOM,
            upstream_model="text-embedding-x",
            base_url=f"http://127.0.0.1:{port}/v1",
            supports_chat=False,
            supports_embeddings=True,
        )
        response = await post(
            {"model": "up/embed", "input": ["hello world", [1, 2, 3]], "dimensions": 4}
        )
        body = response.json()
        assert response.status_code == 200, body
        assert server.requests[-1] == {
            "model": "text-embedding-x",
            "input": ["hello world", [1, 2, 3]],
            "encoding_format": "float",
            "dimensions": 4,
        }
        assert [len(item["embedding"]) for item in body["data"]] == [4, 4]
        assert body["usage"]["prompt_tokens"] == 5  # the upstream's own count
    finally:
        await clients_close()
        await server.close()


async def test_embedding_errors(post, settings):
    await sync_to_async(mock_model)("mock/chat-only")
    await sync_to_async(minilm_row)()
    response = await post({"model": "mock/chat-only", "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_lacks_capability"
    # Token ids to the text-only local model: refused (and recorded as failed).
    response = await post({"input": [[101, 2000]]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
    assert await Embedding.objects.filter(status="failed").acount() == 1
    settings.TOKENFLOW_MAX_EMBEDDING_INPUTS = 3
    response = await post({"input": ["a", "b", "c", "d"]})
    assert response.status_code == 413
    for bad in ("", [], [""], [1.5], {"text": "x"}, [["a"]]):
        response = await post({"input": bad})
        assert response.status_code == 400, bad
    response = await post({"input": "x", "encoding_format": "int8"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "encoding_format"
    await asyncio.sleep(0)
