"""Helpers for batch tests: create jobs and run a worker until a job settles."""

import asyncio

from asgiref.sync import sync_to_async

from batches.models import BatchJob
from batches.services import batch_create
from batches.worker import BatchWorker


def make_job(model_name: str, n: int = 10, **options) -> BatchJob:
    items = [
        (
            None,
            {
                "custom_id": f"item-{i}",
                "body": {"messages": [{"role": "user", "content": f"q{i}"}]},
            },
        )
        for i in range(n)
    ]
    return batch_create(items=items, model=model_name, **options)


def worker(job: BatchJob | None = None, **kwargs) -> BatchWorker:
    kwargs.setdefault("poll_seconds", 0.05)
    kwargs.setdefault("lease_seconds", 30)
    kwargs.setdefault("publish", False)
    if job is not None:
        kwargs.setdefault("job_ids", [job.pk])
        kwargs.setdefault("exit_when_idle", True)
    return BatchWorker(**kwargs)


async def run_worker(job: BatchJob, timeout: float = 60, **kwargs) -> BatchWorker:
    """Run a worker on `job` until the job is no longer active (generous timeout)."""
    w = worker(job, **kwargs)
    await asyncio.wait_for(w.run(), timeout=timeout)
    return w


async def refresh(job: BatchJob) -> BatchJob:
    return await sync_to_async(BatchJob.objects.get)(pk=job.pk)


async def wait_for(predicate, timeout: float = 30, interval: float = 0.02) -> None:
    """Poll an async predicate until true (generous timeout, no tight timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
