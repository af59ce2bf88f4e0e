"""The batch worker against the mock provider: lifecycle, retries, pause, cancel, leases."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.services import batch_cancel, batch_pause, batch_resume
from routing.providers.mock import reset_mock_calls
from tests.batches.helpers import make_job, refresh, run_worker, wait_for, worker
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_backoff(settings):
    settings.TOKENFLOW_BATCH_BACKOFF_BASE = 0.001
    reset_mock_calls()


@sync_to_async
def items_of(job):
    return list(BatchItem.objects.filter(job=job).order_by("id"))


@sync_to_async
def attempts_of(job):
    return list(BatchAttempt.objects.filter(item__job=job).order_by("item_id", "number"))


async def test_job_runs_to_completion():
    model = await sync_to_async(mock_model)(token_delay=0.001)
    job = await sync_to_async(make_job)(model.name, n=25, concurrency=5)
    assert job.status == BatchJob.Status.PENDING
    await run_worker(job)
    job = await refresh(job)
    assert job.status == BatchJob.Status.COMPLETED
    assert job.started_at and job.finished_at
    items = await items_of(job)
    assert {i.status for i in items} == {"completed"}
    assert items[3].result["text"] == "Echo: q3"
    assert items[3].prompt_tokens == 1 and items[3].completion_tokens == 2
    assert len(await attempts_of(job)) == 25
    assert job.statistics["counts"]["completed"] == 25
    assert job.statistics["tokens"]["completion"] == 50
