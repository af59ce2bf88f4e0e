"""Real worker processes on PostgreSQL: SIGKILL one mid-job, the next finishes it exactly once;
SIGTERM stops a worker gracefully. Generous timeouts (a 3 s lease, renewed every second, survives
a loaded machine); skipped without PostgreSQL."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from batches.models import BatchAttempt, BatchItem, BatchJob
from tests.batches.helpers import make_job
from tests.factories import mock_model

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith("postgres"),
        reason="needs DATABASE_URL pointing at PostgreSQL",
    ),
]


def spawn(job_id: int, *extra: str) -> subprocess.Popen:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "batch_worker"]
    command += ["--job", str(job_id), "--lease", "3", "--poll", "0.1", "--quiet", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def test_sigkilled_worker_leaves_leases_that_another_worker_reclaims():
    model = mock_model(first_token_delay=0.2)
    job = make_job(model.name, n=60, concurrency=10)
    first = spawn(job.pk)
    try:
        running = BatchItem.objects.filter(job=job, status="running")
        wait_until(lambda: running.exists())
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    assert BatchItem.objects.filter(job=job, status="completed").count() < 60
    second = spawn(job.pk)
    try:
        assert second.wait(timeout=180) == 0
    finally:
        stop(second)
    assert BatchJob.objects.get(pk=job.pk).status == "completed"
    assert BatchItem.objects.filter(job=job, status="completed").count() == 60
    succeeded = BatchAttempt.objects.filter(item__job=job, status="succeeded")
    assert succeeded.count() == 60
    assert succeeded.values("item_id").distinct().count() == 60


def test_sigterm_finishes_in_flight_items_and_exits():
    model = mock_model(first_token_delay=0.3)
    job = make_job(model.name, n=200, concurrency=5)
    worker = spawn(job.pk)
    try:
        wait_until(lambda: BatchItem.objects.filter(job=job, status="completed").exists())
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        stop(worker)
    items = BatchItem.objects.filter(job=job)
    assert not items.filter(status="running").exists()  # nothing left leased
    completed = items.filter(status="completed").count()
    assert 0 < completed < 200
    assert BatchAttempt.objects.filter(item__job=job).count() == completed
