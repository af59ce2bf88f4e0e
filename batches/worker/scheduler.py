"""The scheduling loop: `BatchWorker`, one per process (`manage.py batch_worker`, the
Python client).

Three asyncio loops share the worker's state: the claim loop keeps every active job's
items in flight up to its concurrency (plus a prefetched queue), the flush loop writes
finished items in bulk (`store`) and finalizes jobs, and the maintenance loop follows job
status changes, re-queues expired leases, renews this worker's leases, cancels overdue
items and publishes progress. Items run in `execute.ItemExecutor`. ORM work runs on two
dedicated threads (claims/reads and writes), each with its own connection.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from accounts.models import ApiKey
from batches import services
from batches.models import BatchItem, BatchJob
from batches.policy import LOCAL_PREFIX, RetryPolicy, hook_load
from batches.quota import key_caps
from batches.selectors import batch_progress
from batches.worker import store
from batches.worker.execute import (
    ItemBudgetExceeded,
    ItemExecutor,
    ItemThrottled,
    JobRun,
    crash_outcome,
)
from batches.worker.store import Claimed, JobNotActive, Outcome

logger = logging.getLogger(__name__)

ItemStatus = BatchItem.Status
JobStatus = BatchJob.Status


class BatchWorker:
    """Run active batch jobs (all, or `job_ids`) until stopped or, with `exit_when_idle`,
    until those jobs are no longer active."""

    def __init__(
        self,
        *,
        job_ids: list[int] | None = None,
        worker_id: str | None = None,
        max_concurrency: int | None = None,
        lease_seconds: float | None = None,
        poll_seconds: float | None = None,
        progress_seconds: float | None = None,
        flush_seconds: float = 0.05,
        executors: dict[str, Callable] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        exit_when_idle: bool = False,
        publish: bool = True,
    ) -> None:
        self.job_ids = job_ids
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.max_concurrency = max_concurrency
        self.lease = lease_seconds or settings.TOKENFLOW_BATCH_LEASE_SECONDS
        self.poll = poll_seconds or settings.TOKENFLOW_BATCH_POLL_SECONDS
        self.progress_every = progress_seconds or settings.TOKENFLOW_BATCH_PROGRESS_SECONDS
        self.flush_seconds = flush_seconds
        self.executors = executors or {}
        self.on_progress = on_progress
        self.exit_when_idle = exit_when_idle
        self.publish = publish
        self.jobs: dict[int, JobRun] = {}
        self.buffer: list[Outcome] = []
        self.stopping = False
        self.hard = False
        # API key id -> monotonic time before which its items wait (over its rpm/tpm).
        self.throttled: dict[int, float] = {}
        # Items whose outcome could not be written at all: their leases are not renewed.
        self.abandoned: set[int] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-db")
        # Results are written on their own connection, so a slow flush never delays a claim.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="batch-write")
        self.items = ItemExecutor(db=self._db, worker_id=self.worker_id)
        self._wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._refreshed = False

    @property
    def upstream_calls(self) -> int:
        return self.items.upstream_calls

    # --- control -------------------------------------------------------------------------

    def stop(self, *, hard: bool = False) -> None:
        """Soft: stop claiming and let in-flight items finish. Hard: cancel them too
        (they return to pending without counting an attempt)."""
        self.stopping = True
        self.hard = self.hard or hard
        for run in self.jobs.values():
            self._release_queue(run)
            if hard:
                for task in list(run.running.values()):
                    task.cancel()
        self._wake.set()
        self._claim_wake.set()
        self._flush_wake.set()

    async def _db(
        self, fn: Callable, *args: Any, _pool: ThreadPoolExecutor | None = None, **kwargs: Any
    ) -> Any:
        """Run ORM code on one of the worker's DB threads (each keeps its connection open)."""

        def call() -> Any:
            try:
                return fn(*args, **kwargs)
            except DatabaseError:
                connection.close()  # reconnect on the next call (server restart, network)
                raise

        return await asyncio.get_running_loop().run_in_executor(_pool or self._pool, call)

    async def run(self, grace_seconds: float = 30.0) -> None:
        loops = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._maintenance_loop()),
        ]
        try:
            await self._wake_until_done()
            deadline = time.monotonic() + grace_seconds
            while self._in_flight() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.stop(hard=True)
            while self._in_flight():
                await asyncio.sleep(0.01)
        finally:
            self.stopping = True
            self._flush_wake.set()
            self._claim_wake.set()
            for task in loops[:1] + loops[2:]:
                task.cancel()
            await asyncio.gather(loops[0], loops[2], return_exceptions=True)
            await loops[1]
            await self._flush()
            for run in list(self.jobs.values()):
                await self._publish(run, force=True)
            await self._db(connections.close_all)
            await self._db(connections.close_all, _pool=self._write_pool)
            self._pool.shutdown(wait=True)
            self._write_pool.shutdown(wait=True)
            self.items.close()

    def close(self) -> None:
        """Close this worker's DB connection and thread (for a worker that never ran)."""
        for pool in (self._pool, self._write_pool):
            pool.submit(connections.close_all).result()
            pool.shutdown(wait=True)

    def _in_flight(self) -> bool:
        return any(run.running for run in self.jobs.values())

    async def _wake_until_done(self) -> None:
        while not self.stopping:
            self._wake.clear()
            if self.exit_when_idle and self._refreshed and not self.jobs:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll)

    # --- jobs ----------------------------------------------------------------------------

    def _load_jobs(self) -> tuple[list[dict[str, Any]], dict[int, ApiKey]]:
        jobs = BatchJob.objects.filter(
            status__in=[JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSING]
        )
        if self.job_ids is not None:
            jobs = jobs.filter(pk__in=self.job_ids)
        rows = list(
            jobs.values(
                "id",
                "status",
                "concurrency",
                "max_attempts",
                "retry_policy",
                "handler",
                "executor",
                "api_key_id",
            )
        )
        if self.job_ids is not None:
            known = {row["id"] for row in rows}
            stopped = set(self.jobs) - known
            for job_id, status in BatchJob.objects.filter(pk__in=stopped).values_list(
                "id", "status"
            ):
                rows.append({"id": job_id, "status": status, "stopped": True})
        # The keys' current limits (an admin edit applies on the next poll).
        keys = ApiKey.objects.in_bulk({row["api_key_id"] for row in rows if row.get("api_key_id")})
        return rows, keys

    async def _refresh_jobs(self) -> None:
        rows, keys = await self._db(self._load_jobs)
        seen = set()
        for row in rows:
            job_id = row["id"]
            seen.add(job_id)
            run = self.jobs.get(job_id)
            if row.get("stopped"):
                if run:
                    self._set_status(run, row["status"])
                continue
            if run is None:
                run = await self._job_start(row)
                if run is None:
                    continue
            run.api_key = keys.get(row["api_key_id"]) if row["api_key_id"] else None
            run.key_cap = key_caps(run.api_key)[1]
            self._set_status(run, row["status"])
            run.concurrency, run.limit = self._cap(row["concurrency"]), row["concurrency"]
        for job_id in set(self.jobs) - seen:
            # Paused (hard), cancelled or failed elsewhere: drop in-flight work.
            status = await self._db(
                lambda j=job_id: (
                    BatchJob.objects.filter(pk=j).values_list("status", flat=True).first()
                )
            )
            self._set_status(self.jobs[job_id], status or JobStatus.CANCELLED)

    def _cap(self, concurrency: int) -> int:
        return min(concurrency, self.max_concurrency) if self.max_concurrency else concurrency

    async def _job_start(self, row: dict[str, Any]) -> JobRun | None:
        """A JobRun for a job row; its hooks come only from the allowlist (a path typed
        in the admin or stored by hand is refused here too, and the job fails)."""
        executor = None
        name = row["executor"]
        try:
            if name.startswith(LOCAL_PREFIX):
                executor = self.executors.get(name)
                if executor is None:
                    return None  # only the Python process that created it can run it
            else:
                executor = hook_load(name, executor=True)
            handler = hook_load(row["handler"])
        except ImportError as exc:  # HookNotAllowed too
            await self._db(services.batch_fail, job_id=row["id"], message=str(exc))
            return None
        run = JobRun(
            id=row["id"],
            status=row["status"],
            concurrency=self._cap(row["concurrency"]),
            limit=row["concurrency"],
            policy=RetryPolicy.for_job(
                max_attempts=row["max_attempts"], options=row["retry_policy"] or {}
            ),
            handler=handler,
            executor=executor,
        )
        self.jobs[run.id] = run
        self._claim_wake.set()
        return run

    def _set_status(self, run: JobRun, status: str) -> None:
        if status == run.status:
            return
        run.status = status
        run.dirty = True
        if status in BatchJob.ACTIVE:
            run.idle_until = 0
            self._claim_wake.set()
            return
        self._release_queue(run)
        if status != JobStatus.PAUSING:
            for task in list(run.running.values()):
                task.cancel()

    def _release_queue(self, run: JobRun) -> None:
        while run.queue:
            item = run.queue.popleft()
            self.buffer.append(
                Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
            )

    # --- claiming ------------------------------------------------------------------------

    def _claim(
        self,
        job_id: int,
        limit: int,
        cap: int,
        held: int,
        start: bool,
        api_key_id: int | None = None,
        key_cap: int = 0,
    ) -> list[Claimed]:
        return store.items_claim(
            job_id=job_id,
            worker_id=self.worker_id,
            lease_seconds=self.lease,
            limit=limit,
            cap=cap,
            held=held,
            start=start,
            api_key_id=api_key_id,
            key_cap=key_cap,
        )

    def _throttled_for(self, run: JobRun, now: float) -> float:
        """Seconds until the run's key may start items again (0: now)."""
        if run.api_key_id is None:
            return 0.0
        return max(0.0, self.throttled.get(run.api_key_id, 0.0) - now)

    async def _claim_loop(self) -> None:
        while not self.stopping:
            self._claim_wake.clear()
            now = time.monotonic()
            wait = self.poll
            for run in list(self.jobs.values()):
                if not run.accepting or self.stopping:
                    continue
                throttled = self._throttled_for(run, now)
                if throttled:  # over its rpm/tpm: neither start nor claim more
                    wait = min(wait, throttled)
                    continue
                if run.queue and len(run.running) < run.concurrency:
                    self._fill(run)  # items a throttle held back
                if now < run.idle_until:
                    continue
                prefetch = run.concurrency  # a queue as deep as the pool hides write stalls
                held = len(run.queue) + len(run.running)
                if held > run.concurrency + prefetch // 2:
                    continue
                want = run.concurrency + prefetch - held
                start = run.status == JobStatus.PENDING
                try:
                    cap = 2 * run.limit
                    items = await self._db(
                        self._claim, run.id, want, cap, held, start, run.api_key_id, run.key_cap
                    )
                except JobNotActive as exc:
                    self._set_status(run, exc.status)
                    continue
                except Exception:
                    logger.exception("Claiming items of batch %s failed", run.id)
                    run.idle_until = time.monotonic() + self.poll
                    continue
                if start and items:
                    run.status = JobStatus.RUNNING
                if not run.accepting or self.stopping:
                    run.queue.extend(items)
                    self._release_queue(run)
                    continue
                run.exhausted = not items and not run.running and not run.queue
                if len(items) < want:
                    run.idle_until = time.monotonic() + self.poll
                self._supersede(run, items)
                run.queue.extend(items)
                self._fill(run)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_wake.wait(), timeout=max(wait, 0.01))

    @staticmethod
    def _supersede(run: JobRun, items: list[Claimed]) -> None:
        """Drop the copies of re-claimed items that this worker still holds: their lease was
        released meanwhile (a hard pause and resume, an expired lease), so the new claim owns
        the item and an old copy's result would be stale. A cancelled old task reports a
        release under its old token, which the write rejects."""
        ids = {item.id for item in items}
        if run.queue and ids.intersection(item.id for item in run.queue):
            run.queue = deque(item for item in run.queue if item.id not in ids)
        for item_id in ids.intersection(run.running):
            run.running.pop(item_id).cancel()

    def _fill(self, run: JobRun) -> None:
        if self._throttled_for(run, time.monotonic()):
            return
        while run.queue and len(run.running) < run.concurrency and run.accepting:
            item = run.queue.popleft()
            task = asyncio.get_running_loop().create_task(self.items.execute(run, item))
            run.running[item.id] = task
            task.add_done_callback(lambda t, r=run, i=item: self._done(r, i, t))
        if len(run.queue) < max(1, run.concurrency // 4):
            self._claim_wake.set()

    def _done(self, run: JobRun, item: Claimed, task: asyncio.Task) -> None:
        if run.running.get(item.id) is task:  # not a newer claim of the same item
            del run.running[item.id]
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, ItemBudgetExceeded):
            self.buffer.append(
                Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
            )
            self._budget_pause(run, exc.message)
            return
        if isinstance(exc, ItemThrottled):
            # Over the key's rpm/tpm: the item waits at the head of the queue, still leased.
            if run.api_key_id is not None:
                until = time.monotonic() + exc.retry_after
                self.throttled[run.api_key_id] = max(self.throttled.get(run.api_key_id, 0), until)
            if run.accepting and not self.stopping:
                run.queue.appendleft(item)
            else:
                self.buffer.append(
                    Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
                )
            self._claim_wake.set()
            return
        if task.cancelled():
            outcome = Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
        elif exc is not None:
            logger.error("Batch item %s crashed", item.id, exc_info=exc)
            try:
                outcome = crash_outcome(run, item, exc, worker_id=self.worker_id)
            except Exception:  # never lose the item: fail it, counted
                logger.exception("Batch item %s: cannot record its crash", item.id)
                error = {"code": "internal_error", "message": "The attempt crashed."}
                outcome = Outcome(
                    item=item,
                    status=ItemStatus.FAILED,
                    attempts=item.attempts + 1,
                    error=error,
                    finished_at=timezone.now(),
                )
        else:
            outcome = task.result()
        self.buffer.append(outcome)
        run.dirty = True
        if not self.stopping:
            self._fill(run)
        if len(self.buffer) >= 500:
            self._flush_wake.set()
        if not run.running and not run.queue:
            run.idle_until = 0  # look again at once: done, or retries became due
            self._claim_wake.set()
            self._wake.set()

    def _budget_pause(self, run: JobRun, message: str) -> None:
        """The key's budget is spent: stop claiming its items and pause every active job of
        the key in this worker, with the reason (a resume clears it)."""
        reason = f"budget_exceeded: {message}"
        for other in list(self.jobs.values()):
            if other is run or (run.api_key_id is not None and other.api_key_id == run.api_key_id):
                if not other.accepting:
                    continue
                self._set_status(other, JobStatus.PAUSING)
                asyncio.get_running_loop().create_task(self._pause_for(other, reason))
        self._wake.set()

    async def _pause_for(self, run: JobRun, reason: str) -> None:
        try:
            status = await self._db(services.batch_pause_for, job_id=run.id, reason=reason)
        except Exception:
            logger.exception("Pausing batch %s for its budget failed", run.id)
            return
        self._set_status(run, status)
        run.dirty = True

    # --- writing -------------------------------------------------------------------------

    def _write(self, outcomes: list[Outcome]) -> set[int]:
        return store.outcomes_write(outcomes)

    async def _flush(self) -> None:
        if not self.buffer:
            return
        outcomes, self.buffer = self.buffer, []
        try:
            report = await self._db(
                store.outcomes_write_isolating, outcomes, _pool=self._write_pool
            )
        except Exception:  # the database is unreachable: keep everything, try again
            logger.exception("Writing %s batch results failed; retrying", len(outcomes))
            self.buffer[:0] = outcomes
            await asyncio.sleep(0.5)
            return
        self.abandoned |= report.abandoned

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wake.wait(), timeout=self.flush_seconds)
            self._flush_wake.clear()
            await self._flush()
            try:
                await self._finalize_due()
            except Exception:
                logger.exception("Finalizing batch jobs failed")
            if self.stopping and not self._in_flight() and not self.buffer:
                return

    async def _finalize_due(self) -> None:
        now = time.monotonic()
        for run in list(self.jobs.values()):
            idle = not run.running and not run.queue
            if not idle or now < run.next_finalize or self.buffer:
                continue
            if not (run.exhausted or run.status not in BatchJob.ACTIVE):
                continue
            run.next_finalize = now + self.poll
            status = await self._db(services.batch_finalize, job_id=run.id)
            self._set_status(run, status)
            if status not in (*BatchJob.ACTIVE, JobStatus.PAUSING):
                await self._publish(run, force=True)
                del self.jobs[run.id]
                self._wake.set()

    # --- maintenance ---------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        next_renew = time.monotonic() + self.lease / 3
        next_progress = 0.0
        while not self.stopping:
            try:
                await self._refresh_jobs()
                self._refreshed = True
                for run in list(self.jobs.values()):
                    released = await self._db(services.batch_release_expired, job_id=run.id)
                    if released and run.accepting:
                        logger.info("Re-queued %s items with expired leases", released)
                        run.idle_until = 0
                        self._claim_wake.set()
                now = time.monotonic()
                for run in list(self.jobs.values()):
                    run.cancel_overdue(now)
                if now >= next_renew:
                    await self._db(
                        store.leases_renew,
                        worker_id=self.worker_id,
                        lease_seconds=self.lease,
                        exclude=set(self.abandoned),
                    )
                    next_renew = now + self.lease / 3
                if now >= next_progress:
                    for run in list(self.jobs.values()):
                        await self._publish(run)
                    next_progress = now + self.progress_every
            except Exception:
                logger.exception("Batch worker maintenance failed")
            self._wake.set()
            await asyncio.sleep(self.poll)

    async def _publish(self, run: JobRun, *, force: bool = False) -> None:
        """Push progress to ws/batches/<id>/ subscribers (throttled by the caller)."""
        if not (run.dirty or force):
            return
        run.dirty = False
        try:
            progress = await self._db(lambda: batch_progress(job=BatchJob.objects.get(pk=run.id)))
        except BatchJob.DoesNotExist:
            return
        if self.on_progress:
            self.on_progress(progress)
        if self.publish:
            await progress_publish(progress)


async def progress_publish(progress: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(
            f"batch_{progress['job_id']}", {"type": "batch.progress", "progress": progress}
        )
    except Exception:
        logger.warning("Cannot publish batch progress", exc_info=True)
