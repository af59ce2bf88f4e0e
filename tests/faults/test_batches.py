"""Batch jobs under faults, with real `manage.py batch_worker` subprocesses on PostgreSQL.

1. PostgreSQL drops every connection of the worker mid-batch and refuses new ones for 3 s
   (the worker's DATABASE_URL goes through a FaultProxy), then comes back.
2. A worker is SIGKILLed while it is inside a result-flush transaction (the
   TOKENFLOW_FAULT_FLUSH_SLEEP fault-injection point holds the transaction open after its
   item UPDATE, so the kill is sure to land there); a second worker finishes the job.

Each ends with the job completed, every item completed exactly once (one succeeded attempt,
one result line), none left pending/running, within the stated bound."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, transaction

from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.selectors import batch_result_lines
from tests.batches.helpers import make_job
from tests.factories import mock_model
from tests.faults.clients import SCENARIO_MARKS
from tests.faults.proxy import FaultProxy

pytestmark = SCENARIO_MARKS

LEASE = 3.0  # seconds: short, so a killed worker's leases expire within the test
OUTAGE = 3.0  # seconds PostgreSQL refuses connections in scenario 1
RECOVERY = 15.0  # stated bound: the job completes within this after PostgreSQL / a worker returns


def database_url(port: int | None = None) -> str:
    """The test database, directly or through a proxy listening on `port`."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    host = "127.0.0.1" if port else db["HOST"] or "127.0.0.1"
    return f"postgres://{auth}@{host}:{port or db['PORT'] or 5432}/{db['NAME']}"


def spawn(job_id: int, url: str, log: Path, **env: str) -> subprocess.Popen:
    """A `batch_worker` for the job; its output goes to `log` (a file, not a pipe: an outage
    logs a traceback per failed poll, which would fill a pipe nobody reads and block it)."""
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", **env}
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "batch_worker"]
    command += ["--job", str(job_id), "--lease", str(LEASE), "--poll", "0.1", "--quiet"]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, log: Path) -> str:
    """Kill it if still running; the end of its output."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    return log.read_text(errors="replace")[-3000:]


def wait_until(predicate, timeout: float, what: str) -> float:
    """Seconds until `predicate()` is true (AssertionError after `timeout`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def completed(job: BatchJob) -> int:
    return BatchItem.objects.filter(job=job, status=BatchItem.Status.COMPLETED).count()


def assert_exactly_once(job: BatchJob, n: int) -> None:
    """0 lost, 0 duplicated, nothing left open."""
    job.refresh_from_db()
    assert job.status == BatchJob.Status.COMPLETED
    items = BatchItem.objects.filter(job=job)
    assert items.count() == n
    assert completed(job) == n, list(items.exclude(status="completed").values("id", "status"))
    assert not items.filter(status__in=["pending", "running"]).exists()
    assert not items.exclude(lease_token="").exists()
    attempts = BatchAttempt.objects.filter(item__job=job)
    succeeded = attempts.filter(status=BatchAttempt.Status.SUCCEEDED)
    assert succeeded.count() == n
    assert succeeded.values("item_id").distinct().count() == n
    lines = [
        json.loads(line)
        for chunk in batch_result_lines(job=job)
        for line in chunk.split("\n")
        if line
    ]
    custom_ids = [line["custom_id"] for line in lines]
    assert len(custom_ids) == n and set(custom_ids) == {f"item-{i}" for i in range(n)}
    assert all(line["response"]["status_code"] == 200 for line in lines)


@pytest.fixture
def pg_proxy():
    db = connection.settings_dict
    proxy = FaultProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)).start()
    yield proxy
    proxy.close()


def test_postgres_drops_all_connections_mid_batch(pg_proxy, tmp_path):
    n = 200
    # ~0.5 s per item at concurrency 20: the job takes about 5 s without faults.
    model = mock_model("mock/batch-pg", response=" ".join(["w"] * 10), token_delay=0.05)
    job = make_job(model.name, n=n, concurrency=20)
    log = tmp_path / "worker.log"
    worker = spawn(job.pk, database_url(pg_proxy.port), log)
    try:
        wait_until(lambda: completed(job) >= 40, 60, "progress before the fault")
        pg_proxy.refuse()  # every open connection reset, new ones refused
        down_at = time.monotonic()
        resets = pg_proxy.stats.resets
        time.sleep(OUTAGE)
        during = completed(job)
        pg_proxy.passthrough()
        back_at = time.monotonic()
        moving = wait_until(lambda: completed(job) > during, RECOVERY, "progress after return")
        done = wait_until(lambda: worker.poll() is not None, RECOVERY + 30, "worker exit")
    finally:
        output = stop(worker, log)
    assert worker.returncode == 0, output
    assert resets > 0 and pg_proxy.stats.refused > 0  # the worker really lost its database
    assert_exactly_once(job, n)
    finished = BatchJob.objects.get(pk=job.pk).finished_at
    print(
        f"\n[faults] batch, PostgreSQL down {back_at - down_at:.1f} s after {resets} resets "
        f"({pg_proxy.stats.refused} connections refused): {during}/{n} completed at its return; "
        f"progress again after {moving:.2f} s, worker exited (job completed) after {done:.2f} s; "
        f"{n} items, {n} succeeded attempts, finished_at set: {finished is not None}"
    )


def open_flush(table: str) -> bool:
    """A worker's result flush is open: its item UPDATE ran, its transaction is not over."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND query LIKE %s",
            [f"UPDATE {table} SET status%"],
        )
        return cursor.fetchone()[0] > 0


def flushing_ids(job: BatchJob) -> set[int]:
    """Items whose rows the open flush has updated (locked by it): running, not lockable."""
    with transaction.atomic():
        running = set(
            BatchItem.objects.filter(job=job, status="running").values_list("id", flat=True)
        )
        free = BatchItem.objects.filter(job=job, status="running").select_for_update(
            skip_locked=True
        )
        return running - set(free.values_list("id", flat=True))


def test_worker_sigkilled_during_a_flush(tmp_path):
    n = 400
    model = mock_model("mock/batch-kill", response="ok", token_delay=0.01)
    job = make_job(model.name, n=n, concurrency=50)
    table = BatchItem._meta.db_table
    logs = tmp_path / "first.log", tmp_path / "second.log"
    first = spawn(job.pk, database_url(), logs[0], TOKENFLOW_FAULT_FLUSH_SLEEP="2")
    try:
        # The second flush or later: some results committed, the next batch in the open one.
        wait_until(lambda: completed(job) > 0 and open_flush(table), 60, "an open flush")
        in_flush = flushing_ids(job)
        before = completed(job)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first, logs[0])
    # The killed transaction rolled back: nothing it wrote is visible, its items stay leased.
    wait_until(lambda: not open_flush(table), 10, "the killed session to end")
    assert in_flush and completed(job) == before < n
    assert not BatchItem.objects.filter(pk__in=in_flush).exclude(status="running").exists()
    assert BatchAttempt.objects.filter(item__job=job).count() == before
    started = time.monotonic()
    second = spawn(job.pk, database_url(), logs[1])
    try:
        second.wait(timeout=LEASE + RECOVERY + 30)
    finally:
        output = stop(second, logs[1])
    assert second.returncode == 0, output
    recovered = time.monotonic() - started
    assert_exactly_once(job, n)
    print(
        f"\n[faults] batch, worker SIGKILLed inside a flush: {before}/{n} committed, "
        f"{len(in_flush)} in the flush it was inside (rolled back); a second worker "
        f"completed the job {recovered:.2f} s after it started "
        f"(leases of {LEASE:.0f} s expire first); "
        f"{n} items, {n} succeeded attempts"
    )
