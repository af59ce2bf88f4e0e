"""The response cache (exact and semantic) on every transport: hits, misses, scoping,
expiry, opting out, bad input, the admin purge and another process's entries."""

import asyncio
import json
import os
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import ApiKey
from response_cache.embedders import default_threshold
from response_cache.index import semantic_index
from response_cache.models import CacheEntry
from response_cache.services import cache_flush
from routing.models import Generation
from routing.providers.mock import mock_calls, reset_mock_calls
from tests.factories import mock_model
from tests.streams import parse_sse, read_body
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 20
QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"
NEAR_MISS = "What is the capital of Germany?"


@pytest.fixture(autouse=True)
def fresh_index():
    semantic_index.clear()
    reset_mock_calls()
    yield
    semantic_index.clear()


@pytest.fixture
async def keys(transactional_db):
    first = await sync_to_async(ApiKey.issue)(name="cache-a")
    second = await sync_to_async(ApiKey.issue)(name="cache-b")
    return first[1], second[1]


def priced_model(name: str, **options):
    model = mock_model(name, **options)
    model.input_price_per_mtok = Decimal("2")
    model.output_price_per_mtok = Decimal("10")
    model.save()
    return model


@pytest.fixture
async def model(transactional_db):
    return await sync_to_async(priced_model)("mock/cached", response="Paris is the capital.")


async def sse(key: str, body: dict, headers: dict | None = None, path: str = "/api/generate"):
    response = await AsyncClient().post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )
    if response.status_code != 200:
        return response, json.loads(response.content)
    events = parse_sse(await read_body(response))
    await cache_flush()  # the entry is written after the response
    return response, events


def text_of(events) -> str:
    return "".join(data["text"] for name, data in events if name == "text_chunk")


async def ask(key, model, prompt=QUESTION, **body):
    response, events = await sse(
        key, {"model": model.name, "prompt": prompt, "temperature": 0, **body}
    )
    assert response.status_code == 200, events
    return response, events


# --- exact --------------------------------------------------------------------------------


async def test_exact_hit_on_sse_replays_the_answer_and_records_the_saving(keys, model):
    first, events = await ask(keys[0], model)
    assert first["x-tokenflow-cache"] == "miss" and events[0][1]["cache"] == "miss"
    assert text_of(events) == "Paris is the capital."
    stored = await CacheEntry.objects.select_related("api_key").aget()
    assert stored.response_text == "Paris is the capital." and stored.api_key.name == "cache-a"

    second, events = await ask(keys[0], model)
    assert second["x-tokenflow-cache"] == "exact"
    meta = events[0][1]
    assert meta["cache"] == "exact" and meta["cached_generation_id"] == stored.generation_id
    assert text_of(events) == "Paris is the capital."
    assert events[-1][0] == "end_stream" and events[-1][1]["finish_reason"] == "stop"
    assert mock_calls(model.name) == 1  # the model was called once
    hit = await Generation.objects.aget(pk=meta["generation_id"])
    original = await Generation.objects.aget(pk=stored.generation_id)
    assert hit.status == "completed" and hit.cache == "exact" and hit.cost_usd == 0
    assert hit.output_text == original.output_text
    expected = (original.prompt_tokens * 2 + original.completion_tokens * 10) / Decimal(1e6)
    assert hit.cost_saved_usd == expected and expected > 0
    assert original.cache == "miss"
    await stored.arefresh_from_db()
    assert stored.hits == 1


async def test_exact_hit_on_ndjson(keys, model):
    await ask(keys[0], model)
    response = await AsyncClient().post(
        "/api/generate?format=ndjson",
        data=json.dumps({"model": model.name, "prompt": QUESTION, "temperature": 0}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {keys[0]}"},
    )
    lines = [json.loads(line) for line in (await read_body(response)).splitlines()]
    assert response["x-tokenflow-cache"] == "exact"
    assert lines[0]["metadata"]["cache"] == "exact"
    assert "".join(line["response"] for line in lines) == "Paris is the capital."
    assert lines[-1]["done"] is True and mock_calls(model.name) == 1


async def test_exact_hit_on_websocket(keys, model):
    communicator = WebsocketCommunicator(
        application,
        "/ws/generate/",
        headers=[
            (b"origin", b"http://testserver"),
            (b"authorization", f"Bearer {keys[0]}".encode()),
        ],
    )
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    try:
        results = []
        for _ in range(2):
            await communicator.send_json_to(
                {"type": "generate", "model": model.name, "prompt": QUESTION, "temperature": 0}
            )
            messages = []
            while not messages or messages[-1]["type"] not in ("end", "error"):
                messages.append(await communicator.receive_json_from(timeout=TIMEOUT))
            results.append(messages)
            await cache_flush()
    finally:
        await communicator.disconnect(timeout=TIMEOUT)
    assert [m[0]["cache"] for m in results] == ["miss", "exact"]
    assert "".join(m["text"] for m in results[1] if m["type"] == "token") == (
        "Paris is the capital."
    )
    assert mock_calls(model.name) == 1


async def test_model_auto_is_cached_on_the_routed_model(keys, model, monkeypatch):
    from routing.services import selection

    async def route_to_cached(**kwargs):
        from routing.services.models import ModelChoice

        class Picked:
            def choice(self):
                return ModelChoice(model=model)

        return Picked()

    monkeypatch.setattr("routing.services.generation.model_select", route_to_cached)
    assert selection  # the real selector is replaced only for this test
    for expected in ("miss", "exact"):
        response, events = await sse(
            keys[0], {"prompt": QUESTION, "temperature": 0}, path="/api/models/select"
        )
        assert response["x-tokenflow-cache"] == expected
        assert events[0][1]["model"] == model.name
    assert mock_calls(model.name) == 1


async def test_v1_chat_completions_stream_and_non_stream(keys, model):
    client = AsyncClient()
    headers = {"Authorization": f"Bearer {keys[0]}"}
    body = {"model": model.name, "messages": [{"role": "user", "content": QUESTION}]}
    body["temperature"] = 0
    first = await client.post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        headers=headers,
    )  # fmt: skip
    assert first.status_code == 200 and first["x-tokenflow-cache"] == "miss"
    await cache_flush()
    second = await client.post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        headers=headers,
    )  # fmt: skip
    payload = json.loads(second.content)
    assert second["x-tokenflow-cache"] == "exact"
    assert payload["choices"][0]["message"]["content"] == "Paris is the capital."
    assert payload["usage"]["completion_tokens"] > 0
    streamed = await client.post(
        "/v1/chat/completions", data=json.dumps({**body, "stream": True}),
        content_type="application/json", headers=headers,
    )  # fmt: skip
    chunks = [
        json.loads(line[6:])
        for line in (await read_body(streamed)).splitlines()
        if line.startswith("data: {")
    ]
    assert streamed["x-tokenflow-cache"] == "exact"
    assert "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    ) == ("Paris is the capital.")
    assert mock_calls(model.name) == 1


async def test_exact_key_covers_parameters_messages_and_options(keys, model):
    await ask(keys[0], model)
    for changed in ({"max_tokens": 5}, {"top_p": 0.5}, {"seed": 3}, {"stop": ["x"]}):
        response, _ = await ask(keys[0], model, **changed)
        assert response["x-tokenflow-cache"] == "miss", changed
    response, _ = await sse(
        keys[0],
        {
            "model": model.name,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "Answer in German."},
                {"role": "user", "content": QUESTION},
            ],
        },
    )
    assert response["x-tokenflow-cache"] == "miss"  # a different system prompt
    body = {"model": model.name, "messages": [{"role": "user", "content": QUESTION}]}
    body["temperature"] = 0
    body["response_format"] = {"type": "json_object"}
    await sync_to_async(type(model).objects.filter(pk=model.pk).update)(supports_json_object=True)
    response = await AsyncClient().post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        headers={"Authorization": f"Bearer {keys[0]}"},
    )  # fmt: skip
    assert response["x-tokenflow-cache"] == "miss"


async def test_only_temperature_zero_by_default_and_cache_true_opts_in(keys, model):
    response, events = await ask(keys[0], model, temperature=0.7)
    assert "x-tokenflow-cache" not in response and "cache" not in events[0][1]
    assert await CacheEntry.objects.acount() == 0
    await ask(keys[0], model, temperature=0.7, cache=True)
    response, _ = await ask(keys[0], model, temperature=0.7, cache=True)
    assert response["x-tokenflow-cache"] == "exact"
    row = await Generation.objects.order_by("-id").afirst()
    assert row.cache == "exact"
    first = await Generation.objects.order_by("id").afirst()
    assert first.cache == ""  # not consulted


async def test_cache_false_and_no_cache_header_skip_it(keys, model):
    await ask(keys[0], model)
    response, _ = await ask(keys[0], model, cache=False)
    assert "x-tokenflow-cache" not in response
    response, _ = await sse(
        keys[0],
        {"model": model.name, "prompt": QUESTION, "temperature": 0},
        headers={"Cache-Control": "no-cache"},
    )
    assert "x-tokenflow-cache" not in response
    assert mock_calls(model.name) == 3
    assert await CacheEntry.objects.acount() == 1  # skipped requests store nothing either


async def test_failed_and_tool_call_answers_are_not_stored(keys, transactional_db):
    failing = await sync_to_async(mock_model)("mock/fails", fail_after=2, response="a b c d")
    await ask(keys[0], failing)
    tools = await sync_to_async(mock_model)(
        "mock/tools", supports_tools=True, tool_calls=[{"name": "f", "arguments": {}}]
    )
    body = {
        "model": tools.name,
        "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    response = await AsyncClient().post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        headers={"Authorization": f"Bearer {keys[0]}"},
    )  # fmt: skip
    assert response.status_code == 200 and response["x-tokenflow-cache"] == "miss"
    await cache_flush()
    assert await CacheEntry.objects.acount() == 0


# --- semantic -----------------------------------------------------------------------------


@pytest.mark.parametrize("onnx", [True, False], ids=["onnxruntime", "torch"])
async def test_semantic_hit_on_a_paraphrase_and_miss_on_a_near_miss(keys, model, settings, onnx):
    settings.TOKENFLOW_CACHE_ONNX = onnx
    # fp32 MiniLM: the same vectors on ONNX Runtime and torch (the int8 default has no torch)
    settings.TOKENFLOW_CACHE_EMBEDDER = "minilm"
    await ask(keys[0], model)
    response, events = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"
    assert events[0][1]["cache_similarity"] >= default_threshold()
    assert text_of(events) == "Paris is the capital."
    row = await Generation.objects.aget(pk=events[0][1]["generation_id"])
    assert row.cache == "semantic" and row.cost_usd == 0 and row.cost_saved_usd > 0
    response, events = await ask(keys[0], model, NEAR_MISS)
    assert response["x-tokenflow-cache"] == "miss"
    response, _ = await ask(keys[0], model, "What is not the capital of France?")
    assert response["x-tokenflow-cache"] == "miss"  # negation: the guard refuses it
    assert mock_calls(model.name) == 3


async def test_per_model_threshold_override(keys, model):
    await sync_to_async(type(model).objects.filter(pk=model.pk).update)(
        cache_similarity_threshold=0.999
    )
    await ask(keys[0], model)
    response, _ = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "miss"


async def test_entries_are_scoped_to_the_key_unless_the_model_shares_them(keys, model):
    await ask(keys[0], model)
    response, _ = await ask(keys[1], model)
    assert response["x-tokenflow-cache"] == "miss"
    _row, third = await sync_to_async(ApiKey.issue)(name="cache-c")
    response, _ = await ask(third, model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "miss"
    await CacheEntry.objects.all().adelete()
    semantic_index.clear()
    await sync_to_async(type(model).objects.filter(pk=model.pk).update)(
        cache_shared_across_keys=True
    )
    await ask(keys[0], model)
    response, _ = await ask(keys[1], model)
    assert response["x-tokenflow-cache"] == "exact"
    response, _ = await ask(keys[1], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"


async def test_expired_entries_are_not_served(keys, model, settings):
    settings.TOKENFLOW_CACHE_TTL = 60
    await ask(keys[0], model)
    entry = await CacheEntry.objects.aget()
    assert 59 <= (entry.expires_at - entry.created_at).total_seconds() <= 61
    await CacheEntry.objects.filter(pk=entry.pk).aupdate(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response, _ = await ask(keys[0], model)
    assert response["x-tokenflow-cache"] == "miss"
    assert not await CacheEntry.objects.filter(pk=entry.pk).aexists()  # swept on store
    # The new entry is in this process's index; expired in the database, it is not served.
    await CacheEntry.objects.aupdate(expires_at=timezone.now() - timedelta(seconds=1))
    response, _ = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "miss"


async def test_a_purged_entry_is_dropped_from_a_warm_index(keys, model):
    await ask(keys[0], model)
    response, _ = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"  # the index now holds the entry
    await CacheEntry.objects.all().adelete()
    response, _ = await ask(keys[0], model, "Which city is the capital of France?")
    assert response["x-tokenflow-cache"] == "miss"


# --- bad input and the admin --------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, "true", [], {}])
async def test_cache_must_be_a_boolean(keys, model, value):
    response, error = await sse(keys[0], {"model": model.name, "prompt": "x", "cache": value})
    assert response.status_code == 400 and error["error"]["field"] == "cache"
    v1 = await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(
            {"model": model.name, "messages": [{"role": "user", "content": "x"}], "cache": value}
        ),
        content_type="application/json",
        headers={"Authorization": f"Bearer {keys[0]}"},
    )
    assert v1.status_code == 400 and json.loads(v1.content)["error"]["param"] == "cache"
    assert await Generation.objects.acount() == 0


def test_admin_lists_and_purges_entries(staff_client):
    from response_cache.services import cache_purge

    model = priced_model("mock/admin-cache")
    now = timezone.now()
    rows = [
        CacheEntry.objects.create(
            exact_key=f"{i:064d}",
            scope_key="s" * 64,
            model=model,
            model_name=model.name,
            query_text=f"question {i}",
            response_text="answer",
            expires_at=now + timedelta(seconds=60 if i else -1),
        )
        for i in range(3)
    ]
    page = staff_client.get("/admin/response_cache/cacheentry/")
    assert page.status_code == 200 and b"question 2" in page.content
    response = staff_client.post(
        "/admin/response_cache/cacheentry/",
        {"action": "purge_expired", "_selected_action": [rows[1].pk]},
    )
    assert response.status_code == 302
    assert sorted(CacheEntry.objects.values_list("pk", flat=True)) == [rows[1].pk, rows[2].pk]
    staff_client.post(
        "/admin/response_cache/cacheentry/",
        {"action": "purge_selected", "_selected_action": [rows[1].pk]},
    )
    assert list(CacheEntry.objects.values_list("pk", flat=True)) == [rows[2].pk]
    assert cache_purge(model=model) == 1 and not CacheEntry.objects.exists()


# --- another process ----------------------------------------------------------------------


@pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")),
    reason="needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL)",
)
def test_entries_cross_processes(live_server_url):
    """A live daphne process stores an answer; this process serves it (exact and
    semantic); a purge here stops the other process serving it."""
    import httpx

    _row, raw = ApiKey.issue(name="cache-x")
    model = priced_model("mock/cross", response="Paris.")
    headers = {"Authorization": f"Bearer {raw}"}

    def remote(prompt):
        body = {"model": model.name, "prompt": prompt, "temperature": 0}
        response = httpx.post(
            f"{live_server_url}/api/generate", json=body, headers=headers, timeout=120
        )
        assert response.status_code == 200, response.text
        return response.headers["x-tokenflow-cache"], parse_sse(response.text)

    assert remote(QUESTION)[0] == "miss"
    deadline = time.monotonic() + 60  # the other process writes its entry after answering
    while not CacheEntry.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    local = sync_to_async_run(ask, raw, model, PARAPHRASE)
    assert local[0]["x-tokenflow-cache"] == "semantic"
    assert text_of(local[1]) == "Paris."
    assert remote(PARAPHRASE)[0] == "semantic"  # now in the other process's index too
    CacheEntry.objects.all().delete()  # a purge here: the other process must not serve it
    assert remote(PARAPHRASE)[0] == "miss"
    assert mock_calls(model.name) == 0  # this process never called the model


def sync_to_async_run(function, *args):
    from asgiref.sync import async_to_sync

    return async_to_sync(function)(*args)


async def test_an_exact_hit_never_embeds_and_a_guarded_miss_does_not_wait(keys, model, monkeypatch):
    from response_cache import services
    from response_cache.embedders import get_embedder

    embedded: list[str] = []
    on_loop: list[bool] = []
    real = services.query_vector

    def counting(text, embedder=None):
        embedded.append(text)
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(text, embedder)

    monkeypatch.setattr(services, "query_vector", counting)
    await ask(keys[0], model)  # miss: embedded once, for the lookup and the stored entry
    assert embedded == [QUESTION]
    await ask(keys[0], model)
    assert embedded == [QUESTION]  # exact hit: no embedding
    entry = await CacheEntry.objects.aget()
    assert entry.embedding is not None and len(entry.embedding) == 384 * 4
    assert entry.embedder == get_embedder().id
    assert on_loop == [False]  # the store's embedding never blocks the event loop


# --- embedders ----------------------------------------------------------------------------

STATIC_PARAPHRASE = "So, what is the capital of France?"  # static 0.967, MiniLM 0.976


async def test_static_embedder_serves_semantic_hits_without_minilm(
    keys, model, settings, monkeypatch
):
    from routing.classifiers import minilm

    settings.TOKENFLOW_CACHE_EMBEDDER = "static"

    def no_minilm(*args, **kwargs):
        raise AssertionError("the static path ran MiniLM")

    monkeypatch.setattr(type(minilm()), "embed_prompt", no_minilm)
    await ask(keys[0], model)
    entry = await CacheEntry.objects.aget()
    assert entry.embedder.startswith("static/") and entry.embedder.endswith("/256")
    assert len(entry.embedding) == 256 * 4
    response, events = await ask(keys[0], model, STATIC_PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"
    assert events[0][1]["cache_similarity"] >= 0.965
    assert text_of(events) == "Paris is the capital."
    response, _ = await ask(keys[0], model, NEAR_MISS)
    assert response["x-tokenflow-cache"] == "miss"  # the guard
    # The static model is less precise: its default threshold is higher than MiniLM's.
    response, _ = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "miss"
    assert mock_calls(model.name) == 3


async def test_switching_embedder_never_compares_another_embedders_vectors(keys, model, settings):
    settings.TOKENFLOW_CACHE_EMBEDDER = "minilm"
    await ask(keys[0], model)  # stored with a MiniLM vector
    settings.TOKENFLOW_CACHE_EMBEDDER = "static"
    response, _ = await ask(keys[0], model, STATIC_PARAPHRASE)
    assert response["x-tokenflow-cache"] == "miss"  # the MiniLM entry is not a candidate
    response, _ = await ask(keys[0], model)
    assert response["x-tokenflow-cache"] == "exact"  # exact keys do not depend on it
    response, _ = await ask(keys[0], model, "So, what is the capital of France ?")
    assert response["x-tokenflow-cache"] == "semantic"  # the static entry just stored
    settings.TOKENFLOW_CACHE_EMBEDDER = "minilm"
    response, events = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"
    entries = {e.pk: e async for e in CacheEntry.objects.all()}
    assert entries[events[0][1]["cache_entry_id"]].query_text == QUESTION


@pytest.mark.parametrize("floor, searched", [(0.55, 0), (0.0, 1)])
async def test_static_prefilter_spares_the_minilm_lookup(
    keys, model, settings, monkeypatch, floor, searched
):
    from response_cache import services

    settings.TOKENFLOW_CACHE_PREFILTER = floor
    searches: list[str] = []
    real = services._search

    def counting(plan, vector, threshold=None, rough=False):
        if not rough:  # a search by the MiniLM vector
            searches.append(plan.query_text)
        return real(plan, vector, threshold, rough)

    monkeypatch.setattr(services, "_search", counting)
    await ask(keys[0], model)
    # Passes the guard (France, no number or negation) but is nothing like the entry.
    response, _ = await ask(keys[0], model, "Why do people visit France in summer?")
    assert response["x-tokenflow-cache"] == "miss"
    assert len(searches) == searched
    response, _ = await ask(keys[0], model, PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"  # a real candidate still is searched


async def test_minilm_path_serves_a_near_verbatim_repeat_without_minilm(keys, model, monkeypatch):
    from routing.classifiers import minilm

    await ask(keys[0], model)  # stored with its MiniLM vector

    def no_minilm(*args, **kwargs):
        raise AssertionError("MiniLM ran for a near-verbatim repeat")

    monkeypatch.setattr(type(minilm()), "embed_prompt", no_minilm)
    monkeypatch.setattr("response_cache.services.cache_store_later", lambda *args: None)
    response, events = await ask(keys[0], model, STATIC_PARAPHRASE)
    assert response["x-tokenflow-cache"] == "semantic"  # the static model alone: >= 0.965
    assert events[0][1]["cache_similarity"] >= 0.965
    assert text_of(events) == "Paris is the capital."


def test_minilm_on_onnxruntime_and_on_torch_give_the_same_vectors(settings):
    import numpy as np

    from response_cache.embedders import get_embedder

    minilm = get_embedder("minilm")
    texts = [QUESTION, PARAPHRASE, "Explain recursion to a child, with an example. " * 8]
    settings.TOKENFLOW_CACHE_ONNX = True
    assert minilm.fast  # the export is prepared: lookups run it inline
    onnx = [minilm.embed(t) for t in texts]
    settings.TOKENFLOW_CACHE_ONNX = False
    assert not minilm.fast
    torch = [minilm.embed(t) for t in texts]
    for a, b in zip(onnx, torch, strict=True):
        assert a.shape == (384,) and float(a @ b) > 0.99999
    too_long = "word " * 300  # past MiniLM's 256-token window: not embedded by either
    assert minilm.embed(too_long) is None
    settings.TOKENFLOW_CACHE_ONNX = True
    assert minilm.embed(too_long) is None
    assert np.isclose(float(np.linalg.norm(onnx[0])), 1.0, atol=1e-5)


def test_static_embedder_vectors():
    import numpy as np

    from response_cache.embedders import get_embedder

    static = get_embedder("static")
    a, b = static.embed(QUESTION), static.embed(NEAR_MISS)
    assert a.shape == (256,) and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert 0.5 < float(a @ b) < 1
    assert static.embed("") is None
    assert static.embed_many([QUESTION, ""]).shape == (2, 256)


def test_model_admin_edits_the_cache_settings(staff_client):
    model = mock_model("mock/admin-settings")
    url = f"/admin/routing/modelranking/{model.pk}/change/"
    page = staff_client.get(url)
    assert b"cache_similarity_threshold" in page.content
    assert b"cache_shared_across_keys" in page.content


async def test_v1_honours_cache_control_no_cache(keys, model):
    body = {"model": model.name, "messages": [{"role": "user", "content": QUESTION}]}
    body["temperature"] = 0
    for headers in ({}, {"Cache-Control": "no-cache"}):
        response = await AsyncClient().post(
            "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
            headers={"Authorization": f"Bearer {keys[0]}", **headers},
        )  # fmt: skip
        await cache_flush()
    assert "x-tokenflow-cache" not in response and mock_calls(model.name) == 2


def test_cache_purge_command():
    from django.core.management import call_command

    model = priced_model("mock/purge-command")
    now = timezone.now()
    for i, ttl in enumerate((-5, 60)):
        CacheEntry.objects.create(
            exact_key=f"{i:064d}",
            scope_key="s" * 64,
            model=model,
            model_name=model.name,
            response_text="answer",
            expires_at=now + timedelta(seconds=ttl),
        )
    call_command("cache_purge", "--expired")
    assert CacheEntry.objects.count() == 1
    call_command("cache_purge", "--model", model.name)
    assert not CacheEntry.objects.exists()


def test_the_int8_export_is_close_to_minilm_and_has_no_torch_fallback(settings):
    """minilm-int8 (the default): its own vectors (own id, own threshold), near MiniLM's;
    without ONNX Runtime it gives none (torch's would be another model's vectors)."""
    from response_cache.embedders import get_embedder

    texts = ["What is the capital of France?", "Explain recursion to a child, briefly."]
    int8, minilm = get_embedder("minilm-int8"), get_embedder("minilm")
    assert int8.id != minilm.id and int8.fast
    for text in texts:
        assert float(int8.embed(text) @ minilm.embed(text)) > 0.95
    settings.TOKENFLOW_CACHE_ONNX = False
    assert not int8.fast and int8.embed(texts[0]) is None


async def test_a_consumer_that_stops_at_the_end_event_still_stores_the_answer(model):
    """A transport may close the stream as soon as it has the end event (the pipelines'
    aggregator does): the answer is stored all the same."""
    from contextlib import aclosing

    from routing.services.generation import (
        GenerationParams,
        GenerationRequest,
        generation_acreate,
    )

    request = GenerationRequest(
        messages=[{"role": "user", "content": QUESTION}],
        model=model.name,
        params=GenerationParams(temperature=0),
    )
    prepared = await generation_acreate(request=request, api_key=None, transport="test")
    async with aclosing(prepared.events()) as events:
        async for event in events:
            if event.type == "end":
                break
    await cache_flush()
    assert await CacheEntry.objects.acount() == 1
