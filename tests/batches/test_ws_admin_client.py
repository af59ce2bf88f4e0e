"""WebSocket progress, the admin pages, the batch_worker command and the Python client."""

import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command

from accounts.models import ApiKey
from batches.client import TokenFlowTask
from batches.models import BatchAttempt, BatchItem, BatchJob
from tests.batches.helpers import make_job, run_worker
from tests.factories import mock_model
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")


async def receive_until(communicator, predicate, timeout=30):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = await communicator.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        if predicate(message):
            return message


async def test_ws_progress_is_pushed_by_the_worker(settings):
    settings.TOKENFLOW_BATCH_WS_POLL_SECONDS = 60  # prove the push path, not the poll fallback
    key, raw = await sync_to_async(ApiKey.issue)(name="ws")
    model = await sync_to_async(mock_model)(token_delay=0.002)
    job = await sync_to_async(make_job)(model.name, n=30, concurrency=5, api_key=key)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/batches/{job.pk}/",
        headers=[ORIGIN, (b"authorization", f"Bearer {raw}".encode())],
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        first = await communicator.receive_json_from(timeout=10)
        assert first["type"] == "progress" and first["total"] == 30 and first["done"] == 0
        await run_worker(job, publish=True, progress_seconds=0.05)
        final = await receive_until(communicator, lambda m: m["status"] == "completed")
        assert final["done"] == 30 and final["counts"]["completed"] == 30
    finally:
        await communicator.disconnect()


async def test_ws_rejects_anonymous_and_foreign_jobs():
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(model.name, n=1)
    communicator = WebsocketCommunicator(application, f"/ws/batches/{job.pk}/", headers=[ORIGIN])
    connected, code = await communicator.connect(timeout=10)
    assert not connected and code == 4401
    await communicator.disconnect()
    _, raw = await sync_to_async(ApiKey.issue)(name="other")
    communicator = WebsocketCommunicator(
        application, f"/ws/batches/{job.pk}/?api_key={raw}", headers=[ORIGIN]
    )
    connected, code = await communicator.connect(timeout=10)
    assert not connected and code == 4404
    await communicator.disconnect()


def test_admin_pages_and_actions(staff_client, settings):
    model = mock_model()
    job = make_job(model.name, n=120)
    item = job.items.first()
    BatchAttempt.objects.create(
        item=item,
        number=1,
        status="failed",
        error_code="rate_limited",
        created_at=item.job.created_at,
    )
    response = staff_client.get("/admin/batches/batchjob/")
    assert response.status_code == 200 and b"0 / 120" in response.content
    response = staff_client.get(f"/admin/batches/batchjob/{job.pk}/change/")
    assert response.status_code == 200
    assert b"first 50" in response.content and b"rate_limited" in response.content
    assert response.content.count(b"item-") < 120
    assert staff_client.get(f"/admin/batches/batchitem/{item.pk}/change/").status_code == 200
    staff_client.post(
        "/admin/batches/batchjob/", {"action": "pause_hard", "_selected_action": [job.pk]}
    )
    assert BatchJob.objects.get(pk=job.pk).status == "paused"
    staff_client.post(
        "/admin/batches/batchjob/", {"action": "resume", "_selected_action": [job.pk]}
    )
    assert BatchJob.objects.get(pk=job.pk).status == "pending"
    staff_client.post(
        "/admin/batches/batchjob/", {"action": "cancel", "_selected_action": [job.pk]}
    )
    assert BatchJob.objects.get(pk=job.pk).status == "cancelled"


def test_batch_worker_command_runs_a_job_in_the_foreground(capsys):
    model = mock_model()
    job = make_job(model.name, n=12, concurrency=4)
    call_command("batch_worker", job=job.pk, poll=0.05)
    assert BatchJob.objects.get(pk=job.pk).status == "completed"
    captured = capsys.readouterr()
    assert f"job {job.pk}: completed" in captured.out
    assert "100.0% 12/12" in captured.err


def test_client_runs_a_request_function_and_resumes():
    calls = []
    gate = threading.Event()

    def request_fn(params):
        calls.append(params["n"])
        if params["n"] >= 5:
            gate.wait(30)
        return {"text": f"#{params['n']}"}

    params = [{"custom_id": f"r{n}", "n": n} for n in range(10)]
    task = TokenFlowTask(request_fn=request_fn, request_params=params, name="client-test")
    task.run(n_workers=2)
    deadline = time.monotonic() + 60
    while task.progress()["counts"]["completed"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    task.hard_stop()
    gate.set()
    stats = task.wait_for_done(timeout=60)
    assert not task._thread.is_alive()  # the snapshot below is final, no write in flight
    assert stats["status"] == "paused"
    assert stats["counts"]["completed"] >= 5
    assert BatchAttempt.objects.filter(item__job=task.job).count() == stats["counts"]["completed"]

    # A new script run with the same name picks the job up again (as after a crash).
    again = TokenFlowTask(request_fn=request_fn, request_params=params, name="client-test")
    assert again.job.pk == task.job.pk
    again.run(n_workers=4).wait_for_done(timeout=60)
    assert not again._thread.is_alive()
    assert again.progress()["status"] == "completed"
    results = again.results()
    assert results["r7"]["text"] == "#7" and len(results) == 10
    assert BatchItem.objects.filter(job=task.job, attempts=1).count() == 10


def test_client_with_gateway_models():
    model = mock_model(response="fixed answer")
    task = TokenFlowTask(
        request_params=[{"messages": [{"role": "user", "content": str(n)}]} for n in range(6)],
        model=model.name,
    )
    stats = task.run(n_workers=3).wait_for_done(timeout=60)
    assert stats["counts"]["completed"] == 6
    assert set(r["text"] for r in task.results().values()) == {"fixed answer"}


async def test_ws_progress_survives_a_dead_channel_layer(settings):
    """Redis (the channel layer) down: the socket still connects and follows the job by
    polling the database; the layer's failures never end the consumer."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": "redis://127.0.0.1:9/0", "socket_connect_timeout": 1}]
            },
        }
    }
    channel_layers.backends.clear()
    settings.TOKENFLOW_BATCH_WS_POLL_SECONDS = 0.2
    key, raw = await sync_to_async(ApiKey.issue)(name="ws-down")
    model = await sync_to_async(mock_model)(token_delay=0.001)
    job = await sync_to_async(make_job)(model.name, n=5, concurrency=5, api_key=key)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/batches/{job.pk}/",
        headers=[ORIGIN, (b"authorization", f"Bearer {raw}".encode())],
    )
    try:
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        first = await communicator.receive_json_from(timeout=10)
        assert first["type"] == "progress" and first["done"] == 0
        await run_worker(job, publish=False)
        final = await receive_until(communicator, lambda m: m.get("status") == "completed")
        assert final["done"] == 5
        await communicator.send_json_to({"type": "ping"})
        assert (await receive_until(communicator, lambda m: m["type"] == "pong"))["type"] == "pong"
    finally:
        await communicator.disconnect()
        channel_layers.backends.clear()
