"""Issue 15, parts 1, 2 and 4: cost on every path (checked by hand from the stored token
counts), per-key budgets (429 budget_exceeded before any upstream call, the remaining-budget
header, batch jobs paused with a reason, the soft limit), GET /api/usage, bad input."""

import asyncio
import datetime
import json
import logging
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import ApiKey
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.services import batch_resume
from compression.models import Compression
from pipelines.models import PipelineRun
from routing.models import Generation, ModelRanking
from routing.providers.mock import mock_calls, reset_mock_calls
from routing.services.spend import BUDGET_HEADER, generation_cost
from routing.tokens import count_tokens
from tests.batches.helpers import make_job, refresh, run_worker
from tests.factories import mock_model
from tests.pipelines.factories import pipeline
from tests.streams import parse_sse, read_body
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

# USD per million tokens: large, so a few tokens cost a visible amount.
IN, CACHED, OUT = Decimal("3000"), Decimal("1500"), Decimal("15000")
MTOK = Decimal(1_000_000)


def key_socket(headers: dict[str, str]) -> WebsocketCommunicator:
    """A /ws/generate/ socket authenticated by the API key in `headers`."""
    return WebsocketCommunicator(
        application,
        "/ws/generate/",
        headers=[
            (b"origin", b"http://testserver"),
            (b"authorization", headers["Authorization"].encode()),
        ],
    )


@pytest.fixture(autouse=True)
def fresh_counters():
    """Test databases reuse primary keys: forget budget counters of earlier tests."""
    cache.clear()
    reset_mock_calls()
    yield
    cache.clear()


def priced(name: str | None = None, **options) -> ModelRanking:
    model = mock_model(name, **options)
    model.input_price_per_mtok, model.cached_input_price_per_mtok = IN, CACHED
    model.output_price_per_mtok = OUT
    model.save()
    return model


def by_hand(row) -> Decimal:
    """The cost of a stored row (Generation or BatchAttempt), computed here from its tokens."""
    cached = getattr(row, "cached_prompt_tokens", None) or 0
    prompt, completion = row.prompt_tokens or 0, row.completion_tokens or 0
    return ((prompt - cached) * IN + cached * CACHED + completion * OUT) / MTOK


def issue(**fields) -> tuple[ApiKey, dict[str, str]]:
    key, raw = ApiKey.issue(name="spend", **fields)
    return key, {"Authorization": f"Bearer {raw}"}


async def post(client, path: str, body: dict, headers: dict, **extra):
    return await client.post(
        path, json.dumps(body), content_type="application/json", headers=headers, **extra
    )


def spent_rows(key: ApiKey, cost: str) -> None:
    """A finished generation of `key` that cost `cost` USD (what the budget seeds from)."""
    model = ModelRanking.objects.first() or priced()
    Generation.objects.create(
        api_key=key,
        model=model,
        model_name=model.name,
        provider="mock",
        status=Generation.Status.COMPLETED,
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd=Decimal(cost),
    )


# --- 1. cost on every path ----------------------------------------------------------------


async def test_sse_ndjson_and_detail_carry_the_cost_of_the_stored_tokens(async_client):
    model = await sync_to_async(priced)(response="alpha beta gamma delta")
    _key, headers = await sync_to_async(issue)()
    body = {"model": model.name, "prompt": "what does it cost?"}
    sse = await post(async_client, "/api/generate", body, headers)
    events = parse_sse(await read_body(sse))
    end = events[-1]
    assert end[0] == "end_stream"
    row = await Generation.objects.aget(pk=end[1]["generation_id"])
    assert row.cost_usd == by_hand(row) > 0
    assert end[1]["cost_usd"] == pytest.approx(float(by_hand(row)))
    detail = await async_client.get(f"/api/generations/{row.pk}", headers=headers)
    assert detail.json()["cost_usd"] == pytest.approx(float(by_hand(row)))
    assert detail.json()["cached_prompt_tokens"] is None

    ndjson = await post(async_client, "/api/generate?format=ndjson", body, headers)
    last = json.loads((await read_body(ndjson)).strip().splitlines()[-1])
    row = await Generation.objects.aget(pk=last["generation_id"])
    assert last["done"] and last["cost_usd"] == pytest.approx(float(by_hand(row)))


async def test_websocket_end_carries_the_cost(async_client):
    model = await sync_to_async(priced)(response="one two three")
    _key, headers = await sync_to_async(issue)()
    socket = key_socket(headers)
    assert (await socket.connect(timeout=10))[0]
    try:
        await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
        while (message := await socket.receive_json_from(timeout=10))["type"] != "end":
            assert message["type"] != "error", message
        row = await Generation.objects.aget(pk=message["generation_id"])
        assert row.transport == "ws" and row.cost_usd == by_hand(row) > 0
        assert message["cost_usd"] == pytest.approx(float(row.cost_usd))
    finally:
        await socket.disconnect(timeout=10)


async def test_v1_keeps_openai_usage_and_stores_the_cost(async_client):
    model = await sync_to_async(priced)(response="red green blue")
    _key, headers = await sync_to_async(issue)()
    body = {"model": model.name, "messages": [{"role": "user", "content": "colours"}]}
    response = await post(async_client, "/v1/chat/completions", body, headers)
    data = response.json()
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    row = await Generation.objects.alatest("pk")
    assert data["usage"]["prompt_tokens"] == row.prompt_tokens
    assert row.cost_usd == by_hand(row) > 0


async def test_provider_cached_prompt_tokens_are_billed_at_the_cached_price(async_client):
    model = await sync_to_async(priced)(response="a b", cached_tokens=2)
    _key, headers = await sync_to_async(issue)()
    sse = await post(
        async_client, "/api/generate", {"model": model.name, "prompt": "p q r s"}, headers
    )
    await read_body(sse)
    row = await Generation.objects.alatest("pk")
    assert row.cached_prompt_tokens == 2
    assert row.cost_usd == by_hand(row) == generation_cost(model, row.prompt_tokens, 2, 2)
    assert row.cost_usd < generation_cost(model, row.prompt_tokens, 2, 0)


async def test_a_failed_stream_costs_the_prompt_and_the_output_it_produced(async_client):
    model = await sync_to_async(priced)(response="one two three four five", fail_after=2)
    _key, headers = await sync_to_async(issue)()
    sse = await post(async_client, "/api/generate", {"model": model.name, "prompt": "go"}, headers)
    name, error = parse_sse(await read_body(sse))[-1]
    row = await Generation.objects.alatest("pk")
    assert name == "error" and row.status == "failed"
    assert row.completion_tokens == count_tokens(row.output_text) > 0
    assert row.prompt_tokens > 0 and row.cost_usd == by_hand(row) > 0
    assert error["cost_usd"] == pytest.approx(float(row.cost_usd))


async def test_fan_out_reports_the_total_of_its_generations(async_client):
    aggregator = await sync_to_async(priced)()
    await sync_to_async(pipeline)(
        name="costly",
        aggregator=aggregator,
        agents={"a": {"response": "first answer"}, "b": {"response": "second one here"}},
    )

    @sync_to_async
    def price_agents():
        ModelRanking.objects.update(input_price_per_mtok=IN, output_price_per_mtok=OUT)

    await price_agents()
    _key, headers = await sync_to_async(issue)()
    body = {"message": "hi", "message_id": "m1", "pipeline": "costly"}
    events = parse_sse(await read_body(await post(async_client, "/api/process", body, headers)))
    name, end = events[-1]
    assert name == "end_stream"
    rows = [g async for g in Generation.objects.all()]
    assert len(rows) == 3 and all(r.cost_usd == by_hand(r) > 0 for r in rows)
    total = float(sum(by_hand(r) for r in rows))
    assert end["cost_usd"] == pytest.approx(total)
    run = await PipelineRun.objects.alatest("pk")
    detail = await async_client.get(f"/api/process/{run.pk}", headers=headers)
    assert detail.json()["cost_usd"] == pytest.approx(total)


async def test_batch_items_and_job_report_their_cost():
    model = await sync_to_async(priced)(response="batch answer words")
    job = await sync_to_async(make_job)(model.name, n=4)
    await run_worker(job)
    attempts = [a async for a in BatchAttempt.objects.filter(item__job=job)]
    assert len(attempts) == 4 and all(a.cost_usd == by_hand(a) > 0 for a in attempts)
    items = [i async for i in BatchItem.objects.filter(job=job)]
    assert all(i.cost_usd == by_hand(i) for i in items)

    @sync_to_async
    def statistics():
        from batches.selectors import batch_statistics

        return batch_statistics(job=BatchJob.objects.get(pk=job.pk))

    stats = await statistics()
    assert stats["cost_usd"] == pytest.approx(float(sum(by_hand(a) for a in attempts)))


def test_compression_reports_what_it_saved_at_the_target_models_input_price(client, staff_client):
    model = priced()
    compression = Compression.objects.create(
        original_text="long",
        compressed_text="short",
        original_tokens=1000,
        compressed_tokens=400,
        ratio=0.4,
        engine="fast",
    )
    data = staff_client.get(f"/api/compressions/{compression.pk}").json()
    assert data["tokens_saved"] == 600 and data["saved_usd"] is None  # no model yet
    Generation.objects.create(
        model=model, model_name=model.name, provider="mock", compression=compression
    )
    data = staff_client.get(f"/api/compressions/{compression.pk}").json()
    assert data["target_model"] == model.name
    assert data["saved_usd"] == pytest.approx(float(600 * IN / MTOK))


# --- 2. budgets ---------------------------------------------------------------------------


async def test_a_spent_budget_is_a_429_before_any_upstream_call_on_every_path(
    async_client, settings
):
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"
    model = await sync_to_async(priced)("mock/budget", response="never sent")
    await sync_to_async(pipeline)(name="spent", aggregator=model, agents={"a": {}})
    key, headers = await sync_to_async(issue)(max_budget_usd=Decimal("0.01"), budget_period="day")
    await sync_to_async(spent_rows)(key, "0.02")  # seeded from the database
    before = await Generation.objects.acount()
    bodies = {
        "/api/generate": {"model": model.name, "prompt": "x"},
        "/api/models/select": {"prompt": "x"},
        "/api/process": {"message": "x", "message_id": "b1", "pipeline": "spent"},
        "/v1/chat/completions": {
            "model": model.name,
            "messages": [{"role": "user", "content": "x"}],
        },
    }
    for path, body in bodies.items():
        response = await post(async_client, path, body, headers)
        assert response.status_code == 429, path
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded", path
        if path.startswith("/v1"):
            assert error["type"] and "message" in error  # OpenAI's shape
        assert response[BUDGET_HEADER] == "0.000000"
        assert int(response["Retry-After"]) >= 1
    socket = key_socket(headers)
    assert (await socket.connect(timeout=10))[0]
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
    message = await socket.receive_json_from(timeout=10)
    await socket.disconnect(timeout=10)
    assert message["type"] == "error" and message["code"] == "budget_exceeded"
    assert await Generation.objects.acount() == before  # nothing was even queued
    assert await PipelineRun.objects.acount() == 0
    names = [m.name async for m in ModelRanking.objects.all()]
    assert sum(mock_calls(name) for name in names) == 0


async def test_budget_counts_down_in_the_header_then_refuses(async_client):
    model = await sync_to_async(priced)(response="w " * 10)
    body = {"model": model.name, "prompt": "hello", "max_tokens": 10}
    probe_key, probe = await sync_to_async(issue)()
    await read_body(await post(async_client, "/api/generate", body, probe))
    one = (await Generation.objects.alatest("pk")).cost_usd
    # Room for two requests and a half: the third is admitted (spend still under the
    # limit), the fourth is refused.
    key, headers = await sync_to_async(issue)(max_budget_usd=one * Decimal("2.5"))
    seen = []
    for _ in range(3):
        response = await post(async_client, "/api/generate", body, headers)
        assert response.status_code == 200
        await read_body(response)
        seen.append(Decimal(response[BUDGET_HEADER]))
    refused = await post(async_client, "/api/generate", body, headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    # The header is read when the stream starts, after the request reserved its worst case
    # (a little more than it then costs): so at most 2.5 - 1 requests' worth is left.
    assert seen[0] > seen[1] > seen[2] == 0
    assert one * Decimal("0.5") < seen[0] <= one * Decimal("1.5")
    no_budget = await async_client.get("/api/model-rankings", headers=probe)
    assert BUDGET_HEADER not in no_budget
    total = sum([g.cost_usd async for g in Generation.objects.filter(api_key=key)])
    assert total == 3 * one  # at most one request over the limit


async def test_concurrent_requests_overspend_by_at_most_one_request(async_client):
    model = await sync_to_async(priced)(response="w " * 5, token_delay=0.02)
    body = {"model": model.name, "prompt": "race", "max_tokens": 5}
    _probe, probe = await sync_to_async(issue)()
    await read_body(await post(async_client, "/api/generate", body, probe))
    one = (await Generation.objects.alatest("pk")).cost_usd
    key, headers = await sync_to_async(issue)(max_budget_usd=one * Decimal("3.5"))

    async def request():
        response = await post(async_client, "/api/generate", body, headers)
        if response.status_code == 200:
            await read_body(response)
        return response.status_code

    codes = await asyncio.gather(*[request() for _ in range(12)])
    # Racing requests see each other's worst-case reservations (a little above the actual
    # cost: the prompt estimate counts message overhead), so 3 or 4 get in, never more.
    assert codes.count(200) in (3, 4) and codes.count(429) == 12 - codes.count(200)
    total = sum([g.cost_usd async for g in Generation.objects.filter(api_key=key)])
    assert one * Decimal("2.5") <= total <= one * Decimal("4.5")


async def test_soft_limit_is_logged_once_and_recorded(async_client, caplog):
    model = await sync_to_async(priced)(response="x y z")
    key, headers = await sync_to_async(issue)(soft_budget_usd=Decimal("0.000001"))
    body = {"model": model.name, "prompt": "soft"}
    with caplog.at_level(logging.WARNING, logger="routing.services.spend"):
        for _ in range(3):
            response = await post(async_client, "/api/generate", body, headers)
            assert response.status_code == 200  # a soft limit never refuses
            await read_body(response)
    crossings = [r for r in caplog.records if "soft budget" in r.getMessage()]
    assert len(crossings) == 1
    await key.arefresh_from_db()
    assert key.soft_budget_crossed_at is not None
    assert BUDGET_HEADER not in response  # no hard budget: no header


async def test_batch_job_pauses_with_a_reason_when_the_budget_is_spent():
    model = await sync_to_async(priced)(response="w " * 4)

    @sync_to_async
    def setup():
        one = generation_cost(model, 0, 4)  # the upper bound of an item's output
        key, _ = issue(max_budget_usd=one * 2)
        job = make_job(model.name, n=8, api_key=key, concurrency=1)
        return key, job

    key, job = await setup()
    await run_worker(job)
    job = await refresh(job)
    assert job.status == BatchJob.Status.PAUSED
    assert job.pause_reason.startswith("budget_exceeded")
    done = await BatchItem.objects.filter(job=job, status="completed").acount()
    pending = await BatchItem.objects.filter(job=job, status="pending").acount()
    assert 1 <= done <= 3 and done + pending == 8
    assert mock_calls(model.name) == done  # no upstream call once the budget was spent
    await sync_to_async(batch_resume)(job=job)
    assert (await refresh(job)).pause_reason == ""


# --- 4. usage -----------------------------------------------------------------------------


def _usage_rows():
    mine, mine_headers = issue()
    other, other_headers = issue()
    a, b = priced("mock/a"), priced("mock/b")
    yesterday = timezone.now() - datetime.timedelta(days=1)
    rows = [
        (mine, a, "completed", "", "0.5", None, None),
        (mine, a, "failed", "", "0.25", None, None),
        (mine, b, "completed", "exact", "0", "0.5", yesterday),
        (other, b, "completed", "semantic", "0", "1", None),
        (other, b, "completed", "miss", "2", None, None),
    ]
    for key, model, status, cache_result, cost, saved, created in rows:
        g = Generation.objects.create(
            api_key=key,
            model=model,
            model_name=model.name,
            provider="mock",
            status=status,
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=Decimal(cost),
            cache=cache_result,
            cost_saved_usd=Decimal(saved) if saved else None,
        )
        if created:
            Generation.objects.filter(pk=g.pk).update(created_at=created)
    return mine, mine_headers, other_headers


def test_usage_by_model_day_and_key_for_a_key_and_for_staff(client, staff_client):
    mine, headers, _other = _usage_rows()
    auth = {"HTTP_AUTHORIZATION": headers["Authorization"]}
    data = client.get("/api/usage?group_by=model", **auth).json()
    assert data["data"] == [
        {
            "model": "mock/a",
            "requests": 2,
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "total_tokens": 30,
            "cost_usd": 0.75,
            "cache_hits": 0,
            "saved_usd": 0.0,
            "errors": 1,
        },
        {
            "model": "mock/b",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "cost_usd": 0.0,
            "cache_hits": 1,
            "saved_usd": 0.5,
            "errors": 0,
        },
    ]
    assert data["total"]["requests"] == 3 and data["total"]["cost_usd"] == 0.75
    days = client.get("/api/usage?group_by=day", **auth).json()["data"]
    assert [d["requests"] for d in days] == [1, 2]  # yesterday, today (UTC)
    keys = client.get("/api/usage?group_by=key", **auth).json()["data"]
    assert [k["api_key"] for k in keys] == [mine.prefix]  # only its own
    everyone = staff_client.get("/api/usage?group_by=key").json()
    assert len(everyone["data"]) == 2 and everyone["total"]["cost_usd"] == 2.75
    assert everyone["total"]["cache_hits"] == 2 and everyone["total"]["saved_usd"] == 1.5
    today = timezone.now().date().isoformat()
    only_today = client.get(f"/api/usage?group_by=day&start={today}&end={today}", **auth)
    assert [d["day"] for d in only_today.json()["data"]] == [today]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("group_by=week", "group_by"),
        ("start=yesterday", "start"),
        ("start=2026-13-01", "start"),
        ("start=2026-12-05&end=2026-12-01", "end"),
        ("start=1990-01-01&end=2026-01-01", "start"),
    ],
)
def test_usage_rejects_bad_queries_naming_the_field(client, api_key, query, field):
    response = client.get(f"/api/usage?{query}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


def test_usage_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/usage"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"group_by", "start", "end"}


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_budget_usd", "-1"),
        ("max_budget_usd", "lots"),
        ("soft_budget_usd", "-0.5"),
        ("budget_period", "week"),
    ],
)
def test_admin_key_form_rejects_bad_budgets(staff_client, field, value):
    form = {"name": "k", "budget_period": "month", field: value}
    response = staff_client.post("/admin/accounts/apikey/add/", form)
    assert response.status_code == 200  # the form again, with the error
    assert field in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "field", ["input_price_per_mtok", "output_price_per_mtok", "cached_input_price_per_mtok"]
)
@pytest.mark.parametrize("value", ["-1", "free"])
def test_admin_model_form_rejects_bad_prices(staff_client, field, value):
    model = priced("mock/prices")
    page = staff_client.get(f"/admin/routing/modelranking/{model.pk}/change/")
    form = page.context["adminform"].form
    data = {
        name: ("" if v is None else v)
        for name, v in form.initial.items()
        if name in form.fields and not isinstance(v, list | dict)
    }
    data.update(
        {
            "options": json.dumps(model.options),
            "passthrough_fields": "[]",
            "routes-TOTAL_FORMS": 0,
            "routes-INITIAL_FORMS": 0,
            field: value,
        }
    )
    response = staff_client.post(f"/admin/routing/modelranking/{model.pk}/change/", data)
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    model.refresh_from_db()
    assert getattr(model, field) == (
        CACHED if field.startswith("cached") else IN if field.startswith("input") else OUT
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--max-budget", "-3"], "--max-budget"),
        (["--max-budget", "abc"], "--max-budget"),
        (["--max-budget", "NaN"], "--max-budget"),
        (["--soft-budget", "-1"], "--soft-budget"),
        (["--budget-period", "week"], "--budget-period"),
    ],
)
def test_create_api_key_rejects_bad_budgets(db, args, option):
    with pytest.raises(CommandError, match=option):
        call_command("create_api_key", "--name", "k", *args)
    assert not ApiKey.objects.exists()


def test_create_api_key_sets_a_budget(db, capsys):
    call_command("create_api_key", "--name", "k", "--max-budget", "5", "--budget-period", "day")
    key = ApiKey.objects.get()
    assert key.max_budget_usd == 5 and key.budget_period == "day"


def test_admin_shows_costs_budgets_and_pause_reasons(staff_client):
    model = priced("mock/admin")
    key, _ = issue(max_budget_usd=Decimal("5"), budget_period="day")
    spent_rows(key, "1.25")
    key.soft_budget_crossed_at = timezone.now()
    key.save()
    job = make_job(model.name, n=1, api_key=key)
    BatchJob.objects.filter(pk=job.pk).update(pause_reason="budget_exceeded: spent")
    BatchItem.objects.filter(job=job).update(cost_usd=Decimal("0.5"))
    page = staff_client.get(f"/admin/batches/batchjob/{job.pk}/change/").content.decode()
    assert "budget_exceeded: spent" in page and "$0.500000" in page
    keys = staff_client.get("/admin/accounts/apikey/").content.decode()
    assert "$5.000000 / day" in keys and "$1.250000" in keys  # budget, spent (from the DB)
    generations = staff_client.get("/admin/routing/generation/").content.decode()
    assert "cost (usd)" in generations.lower() and "$1.250000" in generations
    models = staff_client.get("/admin/routing/modelranking/").content.decode()
    assert "$1500.00 / Mtok" in models  # the cached input price
