"""Two web processes behind one port (`manage.py serve_prod`, PostgreSQL + Redis): what a
client sees must not depend on which process answers. Each test sends requests to one
worker, then to the other (ProdStack.pinned), and checks the shared state."""

import asyncio
import json
import os
import re
import signal
import time

import httpx
import psutil
import websockets

from accounts.models import ApiKey
from accounts.ratelimit import rate_limit_reset
from routing.models import CategoryRoute, Generation
from tests.factories import mock_model
from tests.faults.clients import SCENARIO_MARKS, SseStream, stream, wait_rows_closed
from tests.scale.conftest import STALE_STREAM_SECONDS, SWEEP_SECONDS

pytestmark = SCENARIO_MARKS


def issue(**limits) -> tuple[ApiKey, str]:
    key, raw = ApiKey.issue(name="scale", **limits)
    rate_limit_reset(api_key_id=key.pk)  # test databases reuse primary keys
    return key, raw


def headers(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def get(stack, path: str, raw: str | None = None) -> httpx.Response:
    """One request on a new connection (so that pinning decides the process)."""
    return httpx.get(f"{stack.url}{path}", headers=headers(raw) if raw else {}, timeout=30)


def start_stream(stack, pid: int, pids: list[int], raw: str, body: dict) -> SseStream:
    """An SSE stream served by worker `pid` (returns once its first chunk arrived)."""
    thread = SseStream(stack.url, raw, body)
    with stack.pinned(pid, pids):
        thread.start()
        assert thread.first_text.wait(20), "no first chunk"
    assert thread.result.status == 200, thread.result
    return thread


def test_rate_limits_hold_across_processes(stack):
    a, b = stack.workers()
    _, raw = issue(requests_per_minute=4)
    for pid in (a, a, b, b):
        with stack.pinned(pid):
            assert get(stack, "/api/model-rankings", raw).status_code == 200
    # 4 per minute in all: each process has served only 2, yet both refuse the 5th.
    for pid in (a, b):
        with stack.pinned(pid):
            denied = get(stack, "/api/model-rankings", raw)
        assert denied.status_code == 429 and denied.json()["error"]["code"] == "rate_limited"
        assert int(denied.headers["Retry-After"]) > 0


def test_a_revoked_key_is_refused_by_every_process_within_a_second(stack):
    a, b = stack.workers()
    key, raw = issue()
    for pid in (a, b):  # both processes now hold the key in their key cache
        with stack.pinned(pid):
            assert get(stack, "/v1/models", raw).status_code == 200
    key.revoke()  # this (third) process: no signal reaches the workers
    time.sleep(1.0)  # the promise: revocation takes effect everywhere within a second
    for pid in (a, b):
        with stack.pinned(pid):
            denied = get(stack, "/v1/models", raw)
        assert denied.status_code == 401, denied.text


def test_batch_progress_reaches_a_socket_on_the_other_process(stack):
    a, b = stack.workers()
    _, raw = issue()
    model = mock_model(token_delay=0.05)
    items = [
        {"custom_id": str(i), "body": {"messages": [{"role": "user", "content": "one two"}]}}
        for i in range(6)
    ]

    async def scenario():
        ws_url = stack.url.replace("http", "ws", 1)
        # The job is created on process A...
        with stack.pinned(a):
            created = httpx.post(
                f"{stack.url}/api/batches",
                json={"model": model.name, "items": items, "concurrency": 2},
                headers=headers(raw),
                timeout=30,
            )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        # ...watch it from a socket on process B (the socket's DB poll is off: 600 s).
        with stack.pinned(b):
            socket = await websockets.connect(
                f"{ws_url}/ws/batches/{job_id}/", additional_headers=headers(raw)
            )
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        seen = [first]
        try:
            while seen[-1].get("status") != "completed":
                seen.append(json.loads(await asyncio.wait_for(socket.recv(), 15)))
        finally:
            await socket.close()
        return seen

    seen = asyncio.run(scenario())
    assert all(m["type"] == "progress" for m in seen)
    done = [m["done"] for m in seen]
    assert done[-1] == 6 and seen[-1]["counts"]["completed"] == 6
    # Pushed as the batch worker went (several updates), not one final poll.
    assert len(set(done)) >= 3, done


def test_a_stream_is_cancelled_from_the_other_process(stack):
    a, b = stack.workers()
    _, raw = issue()
    model = mock_model(token_delay=0.05)
    thread = start_stream(
        stack, a, [a, b], raw, {"model": model.name, "prompt": " ".join(["word"] * 300)}
    )
    generation_id = thread.result.generation_id
    with stack.pinned(b):
        cancelled = httpx.post(
            f"{stack.url}/api/generations/{generation_id}/cancel", headers=headers(raw)
        )
    assert cancelled.status_code == 202, cancelled.text
    asked_at = time.monotonic()
    thread.join(10)
    assert not thread.is_alive() and thread.result.transport_error is None
    name, data = thread.result.last
    assert name == "end_stream" and data["finish_reason"] == "cancelled"
    assert thread.finished_at - asked_at < 2  # a checkpoint (0.3 s) and a chunk later
    row = Generation.objects.get(pk=generation_id)
    assert row.status == "cancelled" and row.output_text == thread.result.text
    assert 0 < len(row.output_text.split()) < 300


def test_route_edits_reach_every_process(stack):
    a, b = stack.workers()
    _, raw = issue()
    first, second = mock_model(), mock_model()
    CategoryRoute.objects.create(category="weather", description="weather", model=first)

    def chosen(pid: int) -> tuple[str, str]:
        with stack.pinned(pid):
            response = httpx.post(
                f"{stack.url}/api/models/select",
                json={"prompt": "tell me about quantum physics"},
                headers=headers(raw),
                timeout=30,
            )
        assert response.status_code == 200, response.text
        metadata = json.loads(re.search(r"event: metadata\ndata: (.*)\n", response.text)[1])
        return metadata["top_category"], metadata["selected_model"]

    # Both processes build (and cache) their routing table: no "quantum" category yet.
    assert chosen(a)[0] != "quantum" and chosen(b)[0] != "quantum"
    CategoryRoute.objects.create(category="quantum", description="physics", model=second)
    # The edit (this process, Django signal -> Redis stamp) reaches both caches at once.
    assert chosen(a) == ("quantum", second.name)
    assert chosen(b) == ("quantum", second.name)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? ([0-9.eE+-]+)$", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def test_metrics_sum_across_processes(stack):
    a, b = stack.workers()
    _, raw = issue()
    model, echo = mock_model(token_delay=0.05), mock_model()
    completed = {"name": "tokenflow_generations_total", "status": "completed", "provider": "mock"}
    before = metric(get(stack, "/metrics").text, **completed)
    for pid in (a, a, a, b, b):
        with stack.pinned(pid):
            result = stream(stack.url, raw, {"model": echo.name, "prompt": "hi"})
            assert result.names[-1] == "end_stream"
    # Whichever process answers /metrics, it counts all 5.
    for pid in (a, b):
        with stack.pinned(pid):
            assert metric(get(stack, "/metrics").text, **completed) == before + 5
    # In-flight streams: 2 on A and 1 on B, seen as 3 from either process.
    long_body = {"model": model.name, "prompt": " ".join(["word"] * 100)}
    threads = [start_stream(stack, pid, [a, b], raw, long_body) for pid in (a, a, b)]
    for pid in (a, b):
        with stack.pinned(pid):
            text = get(stack, "/metrics").text
        assert metric(text, "tokenflow_streams_in_flight", transport="sse") == 3
    for thread in threads:
        thread.join(30)
    assert metric(get(stack, "/metrics").text, "tokenflow_streams_in_flight") == 0


def test_a_killed_worker_is_replaced_and_its_streams_closed(stack):
    a, b = stack.workers()
    _, raw = issue()
    model, echo = mock_model(token_delay=0.05), mock_model()
    body = {"model": model.name, "prompt": " ".join(["word"] * 100)}  # ~5 s each
    doomed = [start_stream(stack, a, [a, b], raw, body) for _ in range(3)]
    survivors = [start_stream(stack, b, [a, b], raw, body) for _ in range(2)]
    time.sleep(1)  # past a checkpoint (0.3 s) of every stream: partial text saved
    os.kill(a, signal.SIGKILL)
    killed_at = time.monotonic()
    # The other process keeps serving meanwhile.
    for _ in range(5):
        result = stream(stack.url, raw, {"model": echo.name, "prompt": "still here"})
        assert result.names[-1] == "end_stream", result
    for thread in doomed + survivors:
        thread.join(30)
    # The killed process's clients: the connection broke (no end_stream, partial text).
    for thread in doomed:
        assert thread.result.transport_error, thread.result
        assert "end_stream" not in thread.result.names
    for thread in survivors:
        assert thread.result.transport_error is None and thread.result.names[-1] == "end_stream"
    # Their rows: failed "abandoned" by the sweeper once the heartbeat stopped.
    ids = [thread.result.generation_id for thread in doomed]
    wait_rows_closed(ids, timeout=STALE_STREAM_SECONDS + SWEEP_SECONDS + 10)
    rows = Generation.objects.filter(pk__in=ids)
    assert {row.status for row in rows} == {"failed"}
    assert {row.error_code for row in rows} == {"abandoned"}
    assert all(row.output_text for row in rows)  # the checkpointed partial text is kept
    # gunicorn replaced the worker; the new one serves.
    pids = stack.workers()
    assert a not in pids and b in pids
    replacement = next(pid for pid in pids if pid != b)
    assert time.monotonic() - killed_at < 60
    with stack.pinned(replacement):
        result = stream(stack.url, raw, {"model": echo.name, "prompt": "new"})
    assert result.names[-1] == "end_stream", result
    # The dead worker's in-flight streams left the gauge (gunicorn's child_exit hook).
    assert metric(get(stack, "/metrics").text, "tokenflow_streams_in_flight") == 0


def test_a_sidecar_that_dies_is_restarted(stack):
    def batch_workers() -> list[int]:
        pids = []
        for child in psutil.Process(stack.process.pid).children():
            try:
                if "batch_worker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.ZombieProcess:  # killed, not reaped yet
                pass
        return pids

    (worker,) = batch_workers()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while batch_workers() in ([], [worker]):
        assert time.monotonic() < deadline, "the batch worker was not restarted"
        time.sleep(0.2)
    assert worker not in batch_workers() and len(batch_workers()) == 1
