"""The batch worker against the mock provider: lifecycle, retries, pause, cancel, leases."""

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.policy import RetryPolicy
from batches.services import batch_cancel, batch_create, batch_pause, batch_resume
from batches.worker import Claimed, JobRun, Outcome
from routing.models import Classification
from routing.providers.mock import reset_mock_calls
from tests.batches.helpers import make_job, refresh, run_worker, wait_for, worker
from tests.factories import mock_model, route

pytestmark = pytest.mark.django_db(transaction=True)


HANDLERS = [
    "tests.batches.policies.shorten_then_shout",
    "tests.batches.policies.give_up_on_429",
    "tests.batches.policies.always_raise",
]


@pytest.fixture(autouse=True)
def fast_backoff(settings):
    settings.TOKENFLOW_BATCH_BACKOFF_BASE = 0.001
    settings.TOKENFLOW_BATCH_HANDLERS = HANDLERS
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


async def test_retries_keep_the_trajectory():
    model = await sync_to_async(mock_model)(fail_before_first=429, fail_times=3)
    job = await sync_to_async(make_job)(model.name, n=1, max_attempts=5)
    await run_worker(job)
    (item,) = await items_of(job)
    assert item.status == "completed" and item.attempts == 4
    attempts = await attempts_of(job)
    assert [a.status for a in attempts] == ["failed", "failed", "failed", "succeeded"]
    assert [a.status_code for a in attempts] == [429, 429, 429, 200]
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert all(a.retryable for a in attempts[:3])


async def test_retries_stop_at_max_attempts_and_non_retryable_fail_at_once():
    model = await sync_to_async(mock_model)()
    items = [
        (
            None,
            {
                "custom_id": "boom",
                "body": {"prompt": "x", "extra": {"mock": {"fail_before_first": 500}}},
            },
        ),
        (
            None,
            {
                "custom_id": "bad",
                "body": {"prompt": "x", "extra": {"mock": {"fail_before_first": 400}}},
            },
        ),
        (None, {"custom_id": "ok", "body": {"prompt": "fine"}}),
    ]
    from batches.services import batch_create

    job = await sync_to_async(batch_create)(items=items, model=model.name, max_attempts=3)
    await run_worker(job)
    by_id = {i.custom_id: i for i in await items_of(job)}
    assert (by_id["boom"].status, by_id["boom"].attempts) == ("failed", 3)
    assert (by_id["bad"].status, by_id["bad"].attempts) == ("failed", 1)
    assert by_id["ok"].status == "completed"
    assert by_id["boom"].error["code"] == "upstream_error"
    job = await refresh(job)
    assert job.status == "completed"
    assert job.statistics["errors"]["failed_items"] == {"upstream_error": 2}
    assert job.statistics["attempts"]["failed"] == 4


async def test_retry_after_is_honoured():
    model = await sync_to_async(mock_model)(fail_before_first=503, fail_times=1, retry_after=60)
    job = await sync_to_async(make_job)(model.name, n=1, max_attempts=2)
    w = worker(job)
    task = asyncio.create_task(w.run())

    async def retried():
        items = await items_of(job)
        return items[0].attempts == 1 and items[0].status == "pending"

    await wait_for(retried)
    w.stop()
    await asyncio.wait_for(task, 30)
    (item,) = await items_of(job)
    assert item.available_at - timezone.now() > timedelta(seconds=50)
    assert (await refresh(job)).status == "running"


async def test_custom_policy_hook_continue_and_done():
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(
        model.name, n=2, handler="tests.batches.policies.shorten_then_shout"
    )
    await run_worker(job)
    items = await items_of(job)
    assert [i.status for i in items] == ["completed", "completed"]
    assert items[0].result["text"] == "ECHO:"
    assert items[0].result["data"]["tries"] == 2 if "data" in items[0].result else True
    attempts = [a for a in await attempts_of(job) if a.item_id == items[0].pk]
    assert [a.request.get("max_tokens") for a in attempts] == [None, 1]
    assert attempts[1].result["text"] == "Echo:"


async def test_custom_policy_hook_fail():
    model = await sync_to_async(mock_model)(fail_before_first=429)
    job = await sync_to_async(make_job)(
        model.name, n=1, max_attempts=5, handler="tests.batches.policies.give_up_on_429"
    )
    await run_worker(job)
    (item,) = await items_of(job)
    assert (item.status, item.attempts, item.error_code) == ("failed", 1, "handler_failed")


async def test_soft_pause_finishes_in_flight_then_resume_completes():
    model = await sync_to_async(mock_model)(token_delay=0.02)
    job = await sync_to_async(make_job)(model.name, n=40, concurrency=4)
    w = worker(job)
    task = asyncio.create_task(w.run())

    async def some_done():
        return sum(i.status == "completed" for i in await items_of(job)) >= 4

    await wait_for(some_done)
    paused = await sync_to_async(batch_pause)(job=job, mode="soft")
    assert paused.status in ("pausing", "paused")
    await asyncio.wait_for(task, 30)
    job = await refresh(job)
    assert job.status == "paused"
    items = await items_of(job)
    completed = [i for i in items if i.status == "completed"]
    assert {i.status for i in items} == {"completed", "pending"}
    assert 4 <= len(completed) < 40
    assert all(i.attempts == 0 for i in items if i.status == "pending")
    assert len(await attempts_of(job)) == len(completed)

    resumed = await sync_to_async(batch_resume)(job=job)
    assert resumed.status == "running"
    await run_worker(job)
    assert (await refresh(job)).status == "completed"
    attempts = await attempts_of(job)
    assert len(attempts) == 40 and {a.number for a in attempts} == {1}


async def test_hard_pause_returns_in_flight_items_without_an_attempt():
    model = await sync_to_async(mock_model)(first_token_delay=60)
    job = await sync_to_async(make_job)(model.name, n=6, concurrency=3)
    w = worker(job)
    task = asyncio.create_task(w.run())

    async def in_flight():
        return sum(len(r.running) for r in w.jobs.values()) == 3

    await wait_for(in_flight)
    paused = await sync_to_async(batch_pause)(job=job, mode="hard")
    assert paused.status == "paused"
    await asyncio.wait_for(task, 30)
    items = await items_of(job)
    assert {(i.status, i.attempts) for i in items} == {("pending", 0)}
    assert await attempts_of(job) == []
    assert (await refresh(job)).status == "paused"


async def test_cancel_stops_the_job():
    model = await sync_to_async(mock_model)(first_token_delay=60)
    job = await sync_to_async(make_job)(model.name, n=5, concurrency=2)
    w = worker(job)
    task = asyncio.create_task(w.run())
    await wait_for(lambda: _running_tasks(w, 2))
    cancelled = await sync_to_async(batch_cancel)(job=job)
    assert cancelled.status == "cancelled"
    await asyncio.wait_for(task, 30)
    assert {i.status for i in await items_of(job)} == {"cancelled"}
    assert await attempts_of(job) == []


async def _running_tasks(w, n):
    return sum(len(r.running) for r in w.jobs.values()) == n


async def test_expired_leases_are_reclaimed():
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(model.name, n=8, concurrency=8)
    dead = worker(job, lease_seconds=0.2, worker_id="dead")
    claimed = await sync_to_async(dead._claim)(job.pk, 5, 100, 0, True)
    assert len(claimed) == 5
    await sync_to_async(dead.close)()
    await run_worker(job, worker_id="alive")
    items = await items_of(job)
    assert {(i.status, i.attempts) for i in items} == {("completed", 1)}
    assert (await refresh(job)).status == "completed"


async def test_live_leases_are_not_reclaimed():
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(model.name, n=4, concurrency=4)
    holder = worker(job, lease_seconds=600, worker_id="holder")
    assert len(await sync_to_async(holder._claim)(job.pk, 2, 100, 0, True)) == 2
    await sync_to_async(holder.close)()
    w = worker(job, worker_id="other")
    task = asyncio.create_task(w.run())

    async def others_done():
        return sum(i.status == "completed" for i in await items_of(job)) == 2

    await wait_for(others_done)
    await asyncio.sleep(0.3)
    w.stop()
    await asyncio.wait_for(task, 30)
    items = await items_of(job)
    assert sorted(i.status for i in items) == ["completed", "completed", "running", "running"]
    assert {i.worker for i in items if i.status == "running"} == {"holder"}


async def test_two_workers_never_claim_the_same_item():
    model = await sync_to_async(mock_model)(token_delay=0.001)
    job = await sync_to_async(make_job)(model.name, n=300, concurrency=20)
    workers = [worker(job, worker_id=f"w{n}", max_concurrency=10) for n in range(2)]
    await asyncio.wait_for(asyncio.gather(*(w.run() for w in workers)), 120)
    assert (await refresh(job)).status == "completed"
    attempts = await attempts_of(job)
    assert len(attempts) == 300
    assert len({a.item_id for a in attempts}) == 300
    assert sum(w.upstream_calls for w in workers) == 300
    assert all(w.upstream_calls > 0 for w in workers)


async def test_model_auto_classifies_each_item_and_follows_its_route(settings):
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"
    maths = await sync_to_async(mock_model)(response="maths model")
    poems = await sync_to_async(mock_model)(response="poetry model")
    await sync_to_async(route)("maths", maths)
    await sync_to_async(route)("poems", poems)
    items = [
        (None, {"custom_id": "a", "body": {"prompt": "some maths please"}}),
        (None, {"custom_id": "b", "body": {"prompt": "write poems please"}}),
    ]
    job = await sync_to_async(batch_create)(items=items, model="auto")
    await run_worker(job)
    results = {i.custom_id: (i.status, i.model_name, i.result["text"]) for i in await items_of(job)}
    assert results == {
        "a": ("completed", maths.name, "maths model"),
        "b": ("completed", poems.name, "poetry model"),
    }
    assert await Classification.objects.filter(top_category__in=["maths", "poems"]).acount() == 2


def _outcome(item, status, *, attempt=False):
    outcome = Outcome(item=item, status=status, attempts=item.attempts)
    if attempt:
        outcome.attempts, outcome.result = 1, {"text": "stale"}
        outcome.attempt = {
            "number": 1,
            "status": "succeeded",
            "request": item.params,
            "model_name": "",
            "result": outcome.result,
            "error_code": "",
            "error_message": "",
            "status_code": 200,
            "retryable": False,
            "latency_ms": 1.0,
            "prompt_tokens": None,
            "completion_tokens": None,
            "worker": "w",
            "created_at": timezone.now(),
        }
    return outcome


@pytest.mark.parametrize("stale_first", [True, False])
def test_a_stale_result_is_dropped_even_next_to_a_live_release_of_its_item(stale_first):
    """A hard pause released item X, X was claimed again; the old copy's result and the new
    claim's release reach one flush: the item goes back to pending and no attempt is stored."""
    model = mock_model()
    job = make_job(model.name, n=1)
    w = worker(job)
    try:
        (stale,) = w._claim(job.pk, 1, 10, 0, True)
        batch_pause(job=job, mode="hard")
        batch_resume(job=job)
        (live,) = w._claim(job.pk, 1, 10, 0, False)
        assert live.id == stale.id and live.token != stale.token
        outcomes = [
            _outcome(replace(stale), "completed", attempt=True),
            _outcome(live, "pending"),
        ]
        accepted = w._write(outcomes if stale_first else outcomes[::-1])
    finally:
        w.close()
    assert accepted == {live.id}
    item = BatchItem.objects.get(pk=live.id)
    assert (item.status, item.attempts, item.lease_token) == ("pending", 0, "")
    assert not BatchAttempt.objects.filter(item=item).exists()


async def test_a_reclaimed_item_supersedes_the_copy_still_in_flight():
    """The old copy is cancelled and its completion never unregisters the new copy."""
    release = asyncio.Event()

    async def executor(params):
        await release.wait()
        return "done"

    w = worker(None)
    policy = RetryPolicy(max_attempts=3)
    run = JobRun(id=1, status="running", concurrency=2, limit=2, policy=policy, executor=executor)
    old = Claimed(id=7, custom_id="x", params={}, attempts=0, token="old")
    new = Claimed(id=7, custom_id="x", params={}, attempts=0, token="new")
    stale_queued = Claimed(id=8, custom_id="y", params={}, attempts=0, token="old")
    fresh = Claimed(id=8, custom_id="y", params={}, attempts=0, token="new")
    try:
        run.queue.append(old)
        w._fill(run)
        old_task = run.running[7]
        run.queue.append(stale_queued)
        w._supersede(run, [new, fresh])
        assert list(run.queue) == [] and 7 not in run.running
        run.queue.extend([new, fresh])
        w._fill(run)
        new_task = run.running[7]
        await asyncio.wait_for(asyncio.gather(old_task, return_exceptions=True), 10)
        assert old_task.cancelled() and run.running[7] is new_task
        release.set()
        await asyncio.wait_for(asyncio.gather(*run.running.values()), 10)
    finally:
        release.set()
        w._pool.shutdown(wait=True)
        w._write_pool.shutdown(wait=True)
    by_token = {(o.item.id, o.item.token): o for o in w.buffer}
    assert set(by_token) == {(7, "old"), (7, "new"), (8, "new")}
    assert by_token[7, "old"].status == "pending" and by_token[7, "old"].attempt is None
    assert by_token[7, "new"].status == "completed" and by_token[8, "new"].status == "completed"
