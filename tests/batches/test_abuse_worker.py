"""Issue 11, batch side, in the worker: crashed attempts count, unwritable results fail
their item without blocking others, rpm/tpm slow a key's items (never fail them), the
key's concurrency cap holds across jobs, hooks outside the allowlist never run."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from accounts import ratelimit
from accounts.models import ApiKey
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.policy import RetryPolicy
from batches.services import batch_create
from routing.providers.mock import MockProvider, reset_mock_calls
from tests.batches.helpers import make_job, refresh, run_worker, wait_for, worker
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_backoff(settings):
    settings.TOKENFLOW_BATCH_BACKOFF_BASE = 0.001
    settings.TOKENFLOW_BATCH_HANDLERS = [
        "tests.batches.policies.always_raise",
        "tests.batches.policies.circular_result",
    ]
    reset_mock_calls()


@sync_to_async
def items_of(job):
    return list(BatchItem.objects.filter(job=job).order_by("id"))


@sync_to_async
def attempts_of(job):
    return list(BatchAttempt.objects.filter(item__job=job).order_by("item_id", "number"))


@sync_to_async
def key_with(**limits) -> ApiKey:
    key, _raw = ApiKey.issue(name="batch-key", **limits)
    ratelimit.rate_limit_reset(api_key_id=key.pk)  # a shared Redis may hold an old TAT
    return key


# --- finding 3: an attempt that crashed counts ---------------------------------------------------


async def test_a_crash_in_the_worker_counts_as_an_attempt(monkeypatch, settings):
    """The old bug: `backoff_base: 1e15` overflowed timedelta inside the worker, the item
    went back to pending without counting, and the upstream was called for ever."""

    def overflow(self, attempt, retry_after):
        raise OverflowError("date value out of range")

    monkeypatch.setattr(RetryPolicy, "backoff", overflow)
    settings.TOKENFLOW_BATCH_BACKOFF_MAX = 0.01  # the crash fallback waits backoff_max
    model = await sync_to_async(mock_model)(fail_before_first=503)
    job = await sync_to_async(make_job)(model.name, n=2, max_attempts=3)
    w = await run_worker(job, timeout=60)
    items = await items_of(job)
    assert {(i.status, i.attempts) for i in items} == {("failed", 3)}
    # Attempts 1 and 2 crashed while deciding their retry; attempt 3 is the last anyway.
    codes = [a.error_code for a in await attempts_of(job)]
    assert codes == ["internal_error", "internal_error", "upstream_error"] * 2
    assert w.upstream_calls == 6
    assert (await refresh(job)).status == "completed"


async def test_a_handler_that_raises_fails_the_item_after_max_attempts():
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(
        model.name, n=2, max_attempts=3, handler="tests.batches.policies.always_raise"
    )
    w = await run_worker(job, timeout=60)
    items = await items_of(job)
    assert {(i.status, i.attempts, i.error_code) for i in items} == {("failed", 3, "handler_error")}
    assert w.upstream_calls == 6
    assert [a.error_code for a in await attempts_of(job)] == ["handler_error"] * 6


# --- finding 8: a result that cannot be written ---------------------------------------------------


async def test_a_nul_in_a_result_never_blocks_the_other_results(monkeypatch):
    """PostgreSQL jsonb refuses "\\u0000": that item fails with a clear error, the others
    are written, the job completes and the worker stops (no lease renewed for ever).
    SQLite stores the text as it is. The mock model answers "a\\0b" to the prompt "nul"
    (a NUL cannot be stored in its options or the item either: PostgreSQL refuses it)."""
    answer = MockProvider.answer

    def nul_answer(request, options):
        if request.messages[-1]["content"] == "nul":
            return "a\0b"
        return answer(request, options)

    monkeypatch.setattr(MockProvider, "answer", staticmethod(nul_answer))
    model = await sync_to_async(mock_model)()
    items = [(None, {"custom_id": f"ok-{n}", "body": {"prompt": f"q{n}"}}) for n in range(6)]
    items.insert(3, (None, {"custom_id": "nul", "body": {"prompt": "nul"}}))
    job = await sync_to_async(batch_create)(items=items, model=model.name, concurrency=7)
    await run_worker(job, timeout=60)
    by_id = {i.custom_id: i for i in await items_of(job)}
    assert {by_id[f"ok-{n}"].status for n in range(6)} == {"completed"}
    nul = by_id["nul"]
    if connection.vendor == "postgresql":
        assert (nul.status, nul.error_code, nul.attempts) == ("failed", "result_unwritable", 1)
        assert "could not be stored" in nul.error["message"]
        (attempt,) = [a for a in await attempts_of(job) if a.item_id == nul.pk]
        assert (attempt.status, attempt.error_code, attempt.result) == (
            "failed",
            "result_unwritable",
            None,
        )
    else:
        assert (nul.status, nul.result["text"]) == ("completed", "a\0b")
    assert not await BatchItem.objects.filter(job=job, status="running").aexists()
    assert (await refresh(job)).status == "completed"


async def test_a_result_json_cannot_encode_fails_only_its_item():
    """Everywhere (SQLite too): a handler's result that contains itself."""
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(
        model.name, n=3, handler="tests.batches.policies.circular_result"
    )
    await run_worker(job, timeout=60)
    items = await items_of(job)
    assert {(i.status, i.error_code) for i in items} == {("failed", "result_unwritable")}
    assert (await refresh(job)).status == "completed"


# --- finding 2: rate limits and the key's concurrency ------------------------------------


async def test_a_key_over_its_rpm_is_slowed_not_failed(monkeypatch):
    clock = {"now": 1_000_000.0}
    monkeypatch.setattr(ratelimit, "_now", lambda: clock["now"])
    key = await key_with(requests_per_minute=4)
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(model.name, n=7, concurrency=7, api_key=key)
    w = worker(job)
    task = asyncio.create_task(w.run())

    async def four_done():
        return sum(i.status == "completed" for i in await items_of(job)) == 4

    await wait_for(four_done)
    await asyncio.sleep(0.5)  # time for a wrongly admitted fifth item to show up
    items = await items_of(job)
    assert sorted(i.status for i in items).count("completed") == 4
    assert all(i.attempts == 0 for i in items if i.status != "completed")  # not failed
    assert w.upstream_calls == 4 and key.pk in w.throttled
    clock["now"] += 60  # a minute later the key may run them
    w.throttled.clear()
    w._claim_wake.set()
    await asyncio.wait_for(task, 60)
    assert {i.status for i in await items_of(job)} == {"completed"}
    assert w.upstream_calls == 7


async def test_tokens_are_reserved_and_an_item_larger_than_the_tpm_fails(monkeypatch):
    clock = {"now": 2_000_000.0}
    monkeypatch.setattr(ratelimit, "_now", lambda: clock["now"])
    key = await key_with(tokens_per_minute=100)
    model = await sync_to_async(mock_model)()
    items = [
        (None, {"custom_id": "small", "body": {"prompt": "hi", "max_tokens": 40}}),
        (None, {"custom_id": "huge", "body": {"prompt": "hi", "max_tokens": 500}}),
    ]
    job = await sync_to_async(batch_create)(items=items, model=model.name, api_key=key)
    await run_worker(job, timeout=60)
    by_id = {i.custom_id: i for i in await items_of(job)}
    assert by_id["small"].status == "completed"
    assert (by_id["huge"].status, by_id["huge"].error_code, by_id["huge"].attempts) == (
        "failed",
        "exceeds_token_limit",
        0,
    )
    # The small item's reservation (prompt + 40) was settled to what it used (3 tokens).
    _allowed, ahead = ratelimit._gcra(
        ratelimit._key(key.pk, "tok"), now=clock["now"], interval=0.6, cost=0, mode="peek"
    )
    assert 0 < ahead < 40 * 0.6


async def test_the_keys_concurrency_cap_holds_across_its_jobs():
    key = await key_with()
    key.batch_max_concurrency = 3
    await key.asave()
    model = await sync_to_async(mock_model)(first_token_delay=0.05)
    jobs = [
        await sync_to_async(make_job)(model.name, n=12, concurrency=3, api_key=key)
        for _ in range(2)
    ]
    w = worker(None, job_ids=[j.pk for j in jobs], exit_when_idle=True)
    task = asyncio.create_task(w.run())
    peak = 0
    while not task.done():
        peak = max(peak, sum(len(r.running) for r in w.jobs.values()))
        leased = await BatchItem.objects.filter(job__api_key=key, status="running").acount()
        assert leased <= 3
        await asyncio.sleep(0.01)
    await task
    assert peak == 3
    for job in jobs:
        assert (await refresh(job)).status == "completed"


# --- finding 7 (worker part): a hook outside the allowlist never runs ---------------------


async def test_a_hook_stored_by_hand_is_refused_at_run_time(settings):
    model = await sync_to_async(mock_model)()
    job = await sync_to_async(make_job)(model.name, n=2)
    await BatchJob.objects.filter(pk=job.pk).aupdate(handler="os.system")
    w = await run_worker(job, timeout=60)
    job = await refresh(job)
    assert job.status == "failed" and "TOKENFLOW_BATCH_HANDLERS" in job.statistics["error"]
    assert w.upstream_calls == 0
    assert {i.status for i in await items_of(job)} == {"pending"}
