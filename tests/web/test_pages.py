"""The pages without a browser: access, the dashboard aggregates, the live socket."""

import json
import random
from datetime import timedelta

import pytest
from channels.auth import UserLazyObject
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.models import IntegerField, Value
from django.utils import timezone

from accounts.models import ApiKey
from accounts.permissions import Principal
from accounts.websocket import principal_still_valid
from batches.models import BatchItem, BatchJob
from compression.models import Compression
from routing.models import Generation
from tests.factories import mock_model
from web import selectors
from web.consumers import DashboardConsumer


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("boss", password="pw", is_staff=True)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/dashboard/", "/dashboard/data"])
def test_pages_send_anonymous_and_non_staff_users_to_the_admin_login(
    client, path, django_user_model
):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={path}"
    client.force_login(django_user_model.objects.create_user("plain", password="pw"))
    assert client.get(path).status_code == 302


@pytest.mark.django_db
def test_playground_lists_auto_and_the_enabled_models(client, staff):
    mock_model("mock/on")
    mock_model("mock/off", enabled=False)
    client.force_login(staff)
    response = client.get("/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    config = response.context["config"]
    names = [m["name"] for m in config["models"]]
    assert names[0] == "auto" and "mock/on" in names and "mock/off" not in names


@pytest.mark.django_db
def test_dashboard_data_rejects_a_bad_range(client, staff):
    client.force_login(staff)
    response = client.get("/dashboard/data?range=year")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "range"


def _seed(now, rng):
    rows = []
    for i in range(400):
        rows.append(
            Generation(
                model_name=("mock/a", "mock/b")[i % 2],
                provider="mock",
                status="failed" if i % 10 == 0 else "completed",
                prompt_tokens=10,
                completion_tokens=None if i % 10 == 0 else 5,
                ttft_ms=rng.lognormvariate(5, 0.7),
                duration_ms=rng.lognormvariate(7, 0.5),
            )
        )
    created = Generation.objects.bulk_create(rows)
    for index, row in enumerate(created):  # spread over the last 50 minutes
        Generation.objects.filter(pk=row.pk).update(created_at=now - timedelta(seconds=7.5 * index))
    old = Generation.objects.create(model_name="mock/a", provider="mock", status="completed")
    Generation.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=2))
    return created


@pytest.mark.django_db
def test_dashboard_stats_match_the_rows(client, staff):
    now = timezone.now()
    _seed(now, random.Random(7))
    Compression.objects.create(
        original_text="a", compressed_text="a", original_tokens=200, compressed_tokens=50,
        ratio=0.25, engine="fast",
    )  # fmt: skip
    client.force_login(staff)
    stats = client.get("/dashboard/data?range=hour").json()
    assert stats["bucket_seconds"] == 60 and len(stats["axis"]) in (60, 61)
    totals = stats["usage"]["totals"]
    assert totals["mock/a"] == {
        "requests": 200, "tokens": 200 * 10 + 160 * 5, "errors": 40, "cost_usd": 0.0,
        "cache_hits": 0,
    }  # fmt: skip
    assert totals["mock/b"]["requests"] == 200 and totals["mock/b"]["errors"] == 0
    assert sum(stats["usage"]["series"]["mock/a"]["requests"]) == 200
    assert (
        stats["compression"]["saved_tokens"] == 150 and stats["compression"]["saved_share"] == 0.75
    )
    # Histogram percentiles are within one bin (15 %) of the exact ones.
    for field, key in (("ttft_ms", "ttft"), ("duration_ms", "duration")):
        values = sorted(
            Generation.objects.filter(created_at__gte=now - timedelta(hours=1))
            .exclude(**{f"{field}__isnull": True})
            .values_list(field, flat=True)
        )
        for fraction, name in ((0.5, "p50"), (0.95, "p95")):
            exact = values[min(len(values) - 1, int(fraction * len(values)))]
            assert abs(stats[key]["overall"][name] - exact) / exact < 0.15
    day = client.get("/dashboard/data?range=day").json()
    assert day["usage"]["totals"]["mock/a"]["requests"] == 200
    week = client.get("/dashboard/data?range=week").json()
    assert week["usage"]["totals"]["mock/a"]["requests"] == 201


@pytest.mark.django_db
def test_the_sql_histogram_bin_is_the_python_one():
    generation = Generation.objects.create(model_name="m", provider="mock")
    values = [0.001, 1.0, 1.15, 1.1499, 7.3, 99.9, 100.0, 4321.5, 3_000_000.0, 9e9]
    values += [selectors.BIN_EDGES[i] for i in (0, 5, 40, len(selectors.BIN_EDGES) - 1)]
    for value in values:
        sql_bin = (
            Generation.objects.filter(pk=generation.pk)
            .annotate(v=Value(value), b=selectors.HistogramBin(Value(value)))
            .values_list("b", flat=True)
            .get()
        )
        assert sql_bin == selectors.bisect_bin(value), value
    assert isinstance(selectors.HistogramBin(Value(1)).output_field, IntegerField)


def test_histogram_percentiles():
    assert selectors.histogram_percentiles({}) == {"p50": None, "p95": None}
    one_bin = selectors.bisect_bin(100.0)
    result = selectors.histogram_percentiles({one_bin: 10})
    assert abs(result["p50"] - 100) / 100 < 0.08 and result["p95"] == result["p50"]
    low, high = selectors.bisect_bin(10.0), selectors.bisect_bin(1000.0)
    result = selectors.histogram_percentiles({low: 90, high: 10})
    assert result["p50"] < 12 and result["p95"] > 900


@pytest.mark.django_db
def test_live_snapshot_lists_in_flight_and_active_jobs(settings):
    now = timezone.now()
    streaming = Generation.objects.create(model_name="m", provider="mock", status="streaming")
    Generation.objects.create(model_name="m", provider="mock", status="completed")
    stale = Generation.objects.create(model_name="m", provider="mock", status="queued")
    Generation.objects.filter(pk=stale.pk).update(created_at=now - timedelta(hours=3))
    settings.TOKENFLOW_STALE_GENERATION_SECONDS = 3600
    job = BatchJob.objects.create(name="j", model="m", status="running")
    BatchItem.objects.create(job=job, custom_id="1", params={}, status="completed")
    BatchItem.objects.create(job=job, custom_id="2", params={}, status="pending")
    BatchJob.objects.create(name="done", model="m", status="completed")
    live = selectors.live_snapshot()
    assert [g["id"] for g in live["generations"]] == [streaming.pk]
    assert [(b["job_id"], b["done"], b["total"]) for b in live["batches"]] == [(job.pk, 1, 2)]


def test_principal_check_accepts_a_channels_session_user(db, staff):
    """A staff session's user on a socket is a channels UserLazyObject."""
    lazy = UserLazyObject()
    lazy._wrapped = staff
    assert principal_still_valid(Principal(user=lazy))
    staff.is_active = False
    staff.save()
    assert not principal_still_valid(Principal(user=lazy))


@pytest.mark.django_db(transaction=True)
async def test_dashboard_socket_pushes_live_data_and_stats(staff, settings):
    settings.TOKENFLOW_DASHBOARD_LIVE_SECONDS = 0.05
    settings.TOKENFLOW_DASHBOARD_STATS_SECONDS = 0.05
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/?range=hour")
    communicator.scope["user"] = staff
    connected, _ = await communicator.connect()
    assert connected
    first = [await communicator.receive_json_from(timeout=5) for _ in range(2)]
    assert {m["type"] for m in first} == {"live", "stats"}
    assert next(m for m in first if m["type"] == "stats")["range"] == "hour"
    row = await database_sync_to_async(Generation.objects.create)(
        model_name="mock/x", provider="mock", status="streaming"
    )
    for _ in range(20):
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] == "live" and message["generations"]:
            break
    assert message["generations"][0]["id"] == row.pk
    await communicator.send_json_to({"type": "range", "range": "week"})
    for _ in range(20):
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] == "stats" and message["range"] == "week":
            break
    assert message["usage"]["totals"]["mock/x"]["requests"] == 1
    await communicator.send_json_to({"type": "range", "range": "year"})
    for _ in range(20):
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] == "error":
            break
    assert message["field"] == "range"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_dashboard_socket_refuses_api_keys(staff):
    _row, raw = await database_sync_to_async(ApiKey.issue)(name="k")
    key = await database_sync_to_async(ApiKey.objects.get)(prefix=raw[:10])
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/")
    communicator.scope["api_key"] = key
    connected, _ = await communicator.connect()
    assert connected
    error = await communicator.receive_json_from(timeout=5)
    assert error["code"] == "forbidden"
    assert (await communicator.receive_output(timeout=5))["code"] == 4403
    json.dumps(error)
