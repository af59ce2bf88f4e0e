"""The batch worker: an asyncio pool that claims items with leases and writes results in bulk.

One process runs one BatchWorker. It keeps every active job's items in flight up to the
job's concurrency, claims work in batches (`SELECT ... FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite's IMMEDIATE transactions serialise claimers), renews its leases while
it lives, and buffers finished items so that hundreds of completions cost one transaction.
Every write is conditional on the item's lease token, so a result whose lease was lost
(hard pause, cancel, a lease that expired and was re-claimed) is dropped, never duplicated.
All ORM access runs on one dedicated thread (one connection per worker).
"""

import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from batches import services
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.policy import Continue, Done, Fail, ItemView, RetryPolicy
from batches.selectors import batch_progress
from routing.models import ModelRanking
from routing.providers.base import BaseProvider, ChatRequest, ProviderError
from routing.providers.registry import provider_for

logger = logging.getLogger(__name__)

ItemStatus = BatchItem.Status
JobStatus = BatchJob.Status
SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "seed")
LOCAL_PREFIX = "local:"


def result_value(value: Any, finish_reason: str = "stop") -> dict[str, Any]:
    """Normalise what a provider, a request function or a handler returned."""
    if isinstance(value, str):
        return {"text": value, "finish_reason": finish_reason}
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return {"finish_reason": finish_reason, **value}
    return {
        "text": json.dumps(value, ensure_ascii=False, default=str),
        "data": value,
        "finish_reason": finish_reason,
    }


class JobNotActive(Exception):
    """Raised by a claim when the job was paused, cancelled or finished meanwhile."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Claimed:
    id: int
    custom_id: str
    params: dict[str, Any]
    attempts: int
    token: str
    raw: str = ""  # params as stored (JSON text), reused for the attempt's request


def _datetime_adapter() -> Callable[[Any], Any]:
    """Datetime -> DB parameter, cheaply: SQLite stores naive UTC text (as Django does)."""
    if connection.vendor != "sqlite":
        return lambda value: value
    utc = datetime.UTC

    def adapt(value: Any) -> str | None:
        if value is None:
            return None
        return str(value.astimezone(utc).replace(tzinfo=None))

    return adapt


ITEM_ARRAY_TYPES = [
    "bigint",
    "text",
    "text",
    "jsonb",
    "jsonb",
    "text",
    "int",
    "jsonb",
    "text",
    "int",
    "int",
    "float8",
    "timestamptz",
    "timestamptz",
]
ATTEMPT_ARRAY_TYPES = [
    "bigint",
    "int",
    "text",
    "jsonb",
    "text",
    "jsonb",
    "text",
    "text",
    "int",
    "bool",
    "float8",
    "int",
    "int",
    "text",
    "timestamptz",
]


def _write_cursor(postgres: bool):
    """On PostgreSQL a server-side-binding cursor, so arrays go in binary, unquoted."""
    if not postgres:
        return connection.cursor()
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


@dataclass
class Outcome:
    """A finished attempt (or a released item) waiting to be written."""

    item: Claimed
    status: str
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    model_name: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    available_at: Any = None
    finished_at: Any = None
    attempt: dict[str, Any] | None = None  # a BatchAttempt row, None when released


@dataclass
class JobRun:
    """A worker's view of one job."""

    id: int
    status: str
    concurrency: int  # this worker's share (capped by --concurrency)
    limit: int  # the job's concurrency across all workers
    policy: RetryPolicy
    handler: Callable | None = None
    executor: Callable | None = None
    queue: deque = field(default_factory=deque)
    running: dict[int, asyncio.Task] = field(default_factory=dict)
    models: dict[str, tuple[ModelRanking, BaseProvider]] = field(default_factory=dict)
    idle_until: float = 0.0
    exhausted: bool = False
    dirty: bool = True
    next_finalize: float = 0.0
    # Per-item timeouts without a timer per call: the maintenance loop cancels overdue items.
    started: dict[int, float] = field(default_factory=dict)
    timed_out: set[int] = field(default_factory=set)

    def cancel_overdue(self, now: float) -> None:
        limit = self.policy.timeout
        for item_id, started in list(self.started.items()):
            task = self.running.get(item_id)
            if now - started > limit and task is not None and item_id not in self.timed_out:
                self.timed_out.add(item_id)
                task.cancel()

    @property
    def accepting(self) -> bool:
        return self.status in BatchJob.ACTIVE


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
        self.upstream_calls = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-db")
        # Results are written on their own connection, so a slow flush never delays a claim.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="batch-write")
        self._sync_pool: ThreadPoolExecutor | None = None
        self._wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._refreshed = False

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
            if self._sync_pool:
                self._sync_pool.shutdown(wait=False, cancel_futures=True)

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

    def _load_jobs(self) -> list[dict[str, Any]]:
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
            )
        )
        if self.job_ids is not None:
            known = {row["id"] for row in rows}
            stopped = set(self.jobs) - known
            for job_id, status in BatchJob.objects.filter(pk__in=stopped).values_list(
                "id", "status"
            ):
                rows.append({"id": job_id, "status": status, "stopped": True})
        return rows

    async def _refresh_jobs(self) -> None:
        rows = await self._db(self._load_jobs)
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
        executor = None
        name = row["executor"]
        try:
            if name.startswith(LOCAL_PREFIX):
                executor = self.executors.get(name)
                if executor is None:
                    return None  # only the Python process that created it can run it
            elif name:
                executor = import_string(name)
            handler = import_string(row["handler"]) if row["handler"] else None
        except ImportError as exc:
            await self._db(services.batch_fail, job_id=row["id"], message=str(exc))
            return None
        run = JobRun(
            id=row["id"],
            status=row["status"],
            concurrency=self._cap(row["concurrency"]),
            limit=row["concurrency"],
            policy=RetryPolicy.for_job(
                max_attempts=row["max_attempts"], options=row["retry_policy"]
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

    def _claim(self, job_id: int, limit: int, cap: int, held: int, start: bool) -> list[Claimed]:
        """Lease up to `limit` claimable items in one statement; the job's cap counts other
        workers' leases. PostgreSQL skips rows other claimers hold (FOR UPDATE SKIP LOCKED);
        on SQLite the IMMEDIATE transaction already serialises claimers."""
        now = timezone.now()
        token = uuid.uuid4().hex
        postgres = connection.vendor == "postgresql"
        adapt = _datetime_adapter()
        table = BatchItem._meta.db_table
        with transaction.atomic(), connection.cursor() as cursor:
            # The job must still be claimable; FOR KEY SHARE waits for a concurrent pause/cancel
            # (which locks the job row FOR UPDATE) so no item is claimed after it.
            cursor.execute(
                f"SELECT status FROM {BatchJob._meta.db_table} WHERE id = %s"
                + (" FOR KEY SHARE" if postgres else ""),
                [job_id],
            )
            row = cursor.fetchone()
            if row is None or row[0] not in BatchJob.ACTIVE:
                raise JobNotActive(row[0] if row else JobStatus.CANCELLED)
            cursor.execute(
                f"SELECT COUNT(*) FROM {table} WHERE job_id = %s AND status = 'running' "
                "AND worker <> %s",
                [job_id, self.worker_id],
            )
            limit = min(limit, cap - held - cursor.fetchone()[0])
            if limit <= 0:
                return []
            lock = " FOR UPDATE SKIP LOCKED" if postgres else ""
            params_column = "params::text" if postgres else "params"
            cursor.execute(
                f"UPDATE {table} SET status = 'running', lease_token = %s, "
                "lease_expires_at = %s, worker = %s WHERE id IN ("
                f"SELECT id FROM {table} WHERE job_id = %s AND status = 'pending' "
                "AND (available_at IS NULL OR available_at <= %s) "
                f"ORDER BY id LIMIT %s{lock}) "
                f"RETURNING id, custom_id, {params_column}, attempts",
                [
                    token,
                    adapt(now + datetime.timedelta(seconds=self.lease)),
                    self.worker_id,
                    job_id,
                    adapt(now),
                    limit,
                ],
            )
            rows = sorted(cursor.fetchall())
            if rows and start:
                BatchJob.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
                    status=JobStatus.RUNNING, started_at=now
                )
                BatchJob.objects.filter(pk=job_id, started_at__isnull=True).update(started_at=now)
        return [
            Claimed(id=i, custom_id=c, params=json.loads(p), attempts=a, token=token, raw=p)
            for i, c, p, a in rows
        ]

    async def _claim_loop(self) -> None:
        while not self.stopping:
            self._claim_wake.clear()
            now = time.monotonic()
            for run in list(self.jobs.values()):
                if not run.accepting or now < run.idle_until or self.stopping:
                    continue
                prefetch = run.concurrency  # a queue as deep as the pool hides write stalls
                held = len(run.queue) + len(run.running)
                if held > run.concurrency + prefetch // 2:
                    continue
                want = run.concurrency + prefetch - held
                start = run.status == JobStatus.PENDING
                try:
                    cap = 2 * run.limit
                    items = await self._db(self._claim, run.id, want, cap, held, start)
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
                await asyncio.wait_for(self._claim_wake.wait(), timeout=self.poll)

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
        while run.queue and len(run.running) < run.concurrency and run.accepting:
            item = run.queue.popleft()
            task = asyncio.get_running_loop().create_task(self._execute(run, item))
            run.running[item.id] = task
            task.add_done_callback(lambda t, r=run, i=item: self._done(r, i, t))
        if len(run.queue) < max(1, run.concurrency // 4):
            self._claim_wake.set()

    def _done(self, run: JobRun, item: Claimed, task: asyncio.Task) -> None:
        if run.running.get(item.id) is task:  # not a newer claim of the same item
            del run.running[item.id]
        if task.cancelled():
            outcome = Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
        elif task.exception() is not None:
            logger.error("Batch item %s crashed", item.id, exc_info=task.exception())
            outcome = Outcome(item=item, status=ItemStatus.PENDING, attempts=item.attempts)
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

    # --- executing -----------------------------------------------------------------------

    async def _model_for(self, run: JobRun, params: dict[str, Any]) -> tuple[ModelRanking, Any]:
        name = params.get("model") or ""
        if name == services.AUTO:
            model = await self._db(services.model_auto, params["messages"])
            name = model.name
        cached = run.models.get(name)
        if cached is None:
            model = await self._db(lambda: ModelRanking.objects.filter(name=name).first())
            if model is None or not model.enabled:
                raise ProviderError(
                    f"Model {name!r} is unknown or disabled.", code="model_not_found", status=404
                )
            cached = run.models[name] = (model, provider_for(model))
        return cached

    async def _call(self, run: JobRun, params: dict[str, Any]) -> tuple[dict, str, dict | None]:
        """One upstream call: (result, model name, usage)."""
        self.upstream_calls += 1
        if run.executor is not None:
            if inspect.iscoroutinefunction(run.executor):
                value = await run.executor(params)
            else:
                if self._sync_pool is None:
                    self._sync_pool = ThreadPoolExecutor(
                        max(4, run.concurrency), thread_name_prefix="batch-fn"
                    )
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self._sync_pool, run.executor, params)
            return result_value(value), params.get("model", ""), None
        model, provider = await self._model_for(run, params)
        request = ChatRequest(
            messages=params["messages"],
            model=model.upstream_model,
            extra=params.get("extra") or {},
            **{k: params[k] for k in SAMPLING if params.get(k) is not None},
        )
        chunk = await provider.complete(request)
        return result_value(chunk.text, chunk.finish_reason or "stop"), model.name, chunk.usage

    async def _execute(self, run: JobRun, item: Claimed) -> Outcome:
        number = item.attempts + 1
        started = time.monotonic()
        created = timezone.now()
        result = usage = error = None
        model_name = item.params.get("model", "")
        status_code: int | None = None
        retryable = False
        retry_after = None
        run.started[item.id] = started
        try:
            result, model_name, usage = await self._call(run, item.params)
        except asyncio.CancelledError:
            if item.id not in run.timed_out:  # hard pause, cancel, shutdown
                raise
            run.timed_out.discard(item.id)
            retryable = run.policy.retryable(status_code=None, retryable=True, timeout=True)
            error = {"code": "timeout", "message": f"No answer in {run.policy.timeout:g} s."}
        except ProviderError as exc:
            status_code, retry_after = exc.status, exc.retry_after
            retryable = run.policy.retryable(
                status_code=exc.status, retryable=exc.retryable, timeout=False
            )
            error = {"code": exc.code, "message": exc.message, "status": exc.status}
        except Exception as exc:  # a request function may raise anything: retry it
            retryable = run.executor is not None
            error = {"code": "exception", "message": f"{type(exc).__name__}: {exc}"}
            if run.executor is None:
                logger.exception("Batch item %s failed", item.id)
        finally:
            if run.started.get(item.id) == started:  # not a newer claim of the same item
                del run.started[item.id]
        latency = (time.monotonic() - started) * 1000
        usage = usage or {}
        attempt = {
            "number": number,
            "status": BatchAttempt.Status.FAILED if error else BatchAttempt.Status.SUCCEEDED,
            "request": item.params,
            "model_name": model_name,
            "result": result,
            "error_code": error["code"] if error else "",
            "error_message": error["message"] if error else "",
            "status_code": status_code if error else 200,
            "retryable": retryable,
            "latency_ms": latency,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "worker": self.worker_id,
            "created_at": created,
        }
        outcome = Outcome(
            item=item,
            status=ItemStatus.COMPLETED,
            attempts=number,
            result=result,
            model_name=model_name,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency,
            finished_at=timezone.now(),
            attempt=attempt,
        )
        decision = await self._decide(run, item, attempt) if run.handler else None
        if isinstance(decision, Done):
            outcome.result, outcome.error = result_value(decision.result), None
            return outcome
        if isinstance(decision, Fail):
            error = {"code": "handler_failed", "message": decision.message}
            return self._failed(outcome, error)
        if isinstance(decision, Continue):
            if number >= run.policy.max_attempts:
                return self._failed(
                    outcome,
                    error
                    or {
                        "code": "max_attempts",
                        "message": "The handler asked for more attempts than max_attempts.",
                    },
                )
            outcome.params = {**item.params, **decision.params}
            return self._retry(outcome, error, 0.0)
        if error is None:
            return outcome
        if retryable and number < run.policy.max_attempts:
            return self._retry(outcome, error, run.policy.backoff(number, retry_after))
        return self._failed(outcome, error)

    @staticmethod
    def _retry(outcome: Outcome, error: dict | None, delay: float) -> Outcome:
        outcome.status, outcome.result, outcome.error = ItemStatus.PENDING, None, error
        outcome.finished_at = None
        outcome.available_at = timezone.now() + datetime.timedelta(seconds=delay) if delay else None
        return outcome

    @staticmethod
    def _failed(outcome: Outcome, error: dict) -> Outcome:
        outcome.status, outcome.result, outcome.error = ItemStatus.FAILED, None, error
        return outcome

    async def _decide(self, run: JobRun, item: Claimed, attempt: dict) -> Any:
        previous = []
        if item.attempts:
            previous = await self._db(
                lambda: list(
                    BatchAttempt.objects.filter(item_id=item.id)
                    .order_by("number")
                    .values(*attempt.keys())
                )
            )
        view = ItemView(
            id=item.id,
            custom_id=item.custom_id,
            params=item.params,
            attempts=attempt["number"],
            max_attempts=run.policy.max_attempts,
        )
        try:
            return run.handler(view, [*previous, attempt])
        except Exception:
            logger.exception("Policy handler failed for batch item %s", item.id)
            return None

    # --- writing -------------------------------------------------------------------------

    def _write(self, outcomes: list[Outcome]) -> set[int]:
        """Apply outcomes whose lease is still ours and insert their attempts; return the ids.

        An item can have two outcomes in one flush (a stale copy whose lease was released and
        the copy of its new claim): each round holds one outcome per item, so "this id was
        updated" always means "this outcome's token matched", and a stale attempt is never
        inserted next to another outcome's update. All rounds share one transaction.
        """
        rounds: list[list[Outcome]] = []
        seen: dict[int, int] = {}
        for outcome in outcomes:
            index = seen.get(outcome.item.id, 0)
            seen[outcome.item.id] = index + 1
            if index == len(rounds):
                rounds.append([])
            rounds[index].append(outcome)
        if len(rounds) == 1:
            return self._write_round(outcomes)
        accepted: set[int] = set()
        with transaction.atomic():
            for unique in rounds:
                accepted |= self._write_round(unique)
        return accepted

    def _write_round(self, outcomes: list[Outcome]) -> set[int]:
        """Write outcomes of distinct items (see `_write`).

        One UPDATE ... FROM (VALUES ...) RETURNING and one multi-row INSERT per 500 rows, on
        PostgreSQL and SQLite alike: few statements, so the DB thread rarely waits for the GIL.
        """
        adapt = _datetime_adapter()
        postgres = connection.vendor == "postgresql"

        def dumps(value: Any) -> str | None:
            return None if value is None else json.dumps(value, ensure_ascii=False, default=str)

        results = [dumps(o.result) for o in outcomes]
        rows = [
            (
                o.item.id,
                o.item.token,
                o.status,
                result,
                dumps(o.error),
                (o.error or {}).get("code", ""),
                o.attempts,
                dumps(o.params),
                o.model_name,
                o.prompt_tokens,
                o.completion_tokens,
                o.latency_ms,
                adapt(o.available_at),
                adapt(o.finished_at),
            )
            for o, result in zip(outcomes, results, strict=True)
        ]
        table = BatchItem._meta.db_table
        attempt_table = BatchAttempt._meta.db_table
        item_columns = (
            "id, token, status, result, error, error_code, attempts, params, model_name, pt, "
            "ct, lat, av, fin"
        )
        sets = (
            f"status = v.status, result = v.result, error = v.error, error_code = v.error_code, "
            f"attempts = v.attempts, params = COALESCE(v.params, {table}.params), "
            "model_name = v.model_name, prompt_tokens = v.pt, completion_tokens = v.ct, "
            "latency_ms = v.lat, available_at = v.av, finished_at = v.fin, lease_token = '', "
            "lease_expires_at = NULL, worker = ''"
        )
        where = (
            f"{table}.id = v.id AND {table}.lease_token = v.token "
            f"AND {table}.status = 'running' RETURNING {table}.id"
        )
        attempt_columns = (
            "item_id, number, status, request, model_name, result, error_code, error_message, "
            "status_code, retryable, latency_ms, prompt_tokens, completion_tokens, worker, "
            "created_at"
        )
        accepted: set[int] = set()
        with transaction.atomic(), _write_cursor(postgres) as cursor:
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                if postgres:  # 14 array parameters instead of 7,000 scalars
                    types = ITEM_ARRAY_TYPES
                    arrays = ", ".join(f"%b::{t}[]" for t in types)
                    cursor.execute(
                        f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({item_columns}) "
                        f"WHERE {where}",
                        [list(column) for column in zip(*chunk, strict=True)],
                    )
                else:
                    values = ", ".join(["(" + ", ".join(["%s"] * 14) + ")"] * len(chunk))
                    cursor.execute(
                        f"WITH v({item_columns}) AS (VALUES {values}) "
                        f"UPDATE {table} SET {sets} FROM v WHERE {where}",
                        [value for row in chunk for value in row],
                    )
                accepted.update(r[0] for r in cursor.fetchall())
            attempts = [
                (
                    o.item.id,
                    a["number"],
                    a["status"],
                    o.item.raw if a["request"] is o.item.params else dumps(a["request"]),
                    a["model_name"],
                    result if o.result is a["result"] else dumps(a["result"]),
                    a["error_code"],
                    a["error_message"],
                    a["status_code"],
                    a["retryable"],
                    a["latency_ms"],
                    a["prompt_tokens"],
                    a["completion_tokens"],
                    a["worker"],
                    adapt(a["created_at"]),
                )
                for o, result in zip(outcomes, results, strict=True)
                if (a := o.attempt) is not None and o.item.id in accepted
            ]
            for start in range(0, len(attempts), 500):
                chunk = attempts[start : start + 500]
                if postgres:
                    types = ATTEMPT_ARRAY_TYPES
                    arrays = ", ".join(f"%b::{t}[]" for t in types)
                    cursor.execute(
                        f"INSERT INTO {attempt_table} ({attempt_columns}) "
                        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING",
                        [list(column) for column in zip(*chunk, strict=True)],
                    )
                else:
                    marks = "(" + ", ".join(["%s"] * 15) + ")"
                    cursor.execute(
                        f"INSERT INTO {attempt_table} ({attempt_columns}) "
                        f"VALUES {', '.join([marks] * len(chunk))} ON CONFLICT DO NOTHING",
                        [value for row in chunk for value in row],
                    )
        return accepted

    async def _flush(self) -> None:
        if not self.buffer:
            return
        outcomes, self.buffer = self.buffer, []
        try:
            await self._db(self._write, outcomes, _pool=self._write_pool)
        except Exception:
            logger.exception("Writing %s batch results failed; retrying", len(outcomes))
            self.buffer[:0] = outcomes
            await asyncio.sleep(0.5)

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

    def _renew(self) -> None:
        BatchItem.objects.filter(worker=self.worker_id, status=ItemStatus.RUNNING).update(
            lease_expires_at=timezone.now() + datetime.timedelta(seconds=self.lease)
        )

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
                    await self._db(self._renew)
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
