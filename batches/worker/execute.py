"""Executing one item: admission against the key's rate limits, the model (through
`routing.services.models`, as streaming generation resolves it), the upstream call or
request function, the policy hook, and the decision — done, retry later, or failed.

Every attempt that started counts: an upstream error, a timeout, an exception in a
request function or a policy hook, and a crash of this code itself (`crash_outcome`)
each add one attempt, so an item always ends after its job's max_attempts.
"""

import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from accounts.models import ApiKey
from accounts.ratelimit import limits_for
from batches import quota, services
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.policy import Continue, Done, Fail, ItemView, RetryPolicy
from batches.worker.store import Claimed, Outcome
from routing.models import ModelRanking
from routing.providers.base import BaseProvider, ChatRequest, ProviderError
from routing.providers.registry import provider_for
from routing.services.models import model_resolve, provider_check
from routing.services.spend import (
    budget_reserve,
    budget_settle,
    generation_cost,
    has_budget,
    worst_case_cost,
)
from routing.tokens import count_message_tokens
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

ItemStatus = BatchItem.Status
SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "seed")
Db = Callable[..., Awaitable[Any]]


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
    api_key: ApiKey | None = None
    key_cap: int = 0  # the key's cap on leased items across its jobs (0 = none)
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

    @property
    def api_key_id(self) -> int | None:
        return self.api_key.pk if self.api_key is not None else None

    @property
    def rate_limited(self) -> bool:
        """Does the key have rpm/tpm limits (so each item needs an admission)?"""
        return self.api_key is not None and any(limits_for(self.api_key))


class ItemThrottled(Exception):
    """The job's key is over its rpm/tpm: the item waits (leased, not failed)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class ItemBudgetExceeded(Exception):
    """The job's key has spent its budget: the item goes back to pending, the job pauses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _retry(outcome: Outcome, error: dict | None, delay: float) -> Outcome:
    outcome.status, outcome.result, outcome.error = ItemStatus.PENDING, None, error
    outcome.finished_at = None
    outcome.available_at = timezone.now() + datetime.timedelta(seconds=delay) if delay else None
    return outcome


def _failed(outcome: Outcome, error: dict) -> Outcome:
    outcome.status, outcome.result, outcome.error = ItemStatus.FAILED, None, error
    outcome.finished_at = outcome.finished_at or timezone.now()
    return outcome


def _attempt_row(
    item: Claimed, *, number: int, worker_id: str, created: Any, error: dict | None, **values
) -> dict[str, Any]:
    """A BatchAttempt row (see store.ATTEMPT_COLUMNS)."""
    usage = values.get("usage") or {}
    return {
        "number": number,
        "status": BatchAttempt.Status.FAILED if error else BatchAttempt.Status.SUCCEEDED,
        "request": item.params,
        "model_name": values.get("model_name", ""),
        "result": values.get("result"),
        "error_code": error["code"] if error else "",
        "error_message": error["message"] if error else "",
        "status_code": values.get("status_code") if error else 200,
        "retryable": values.get("retryable", False),
        "latency_ms": values.get("latency_ms", 0.0),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": values.get("cost_usd"),
        "worker": worker_id,
        "created_at": created,
    }


def crash_outcome(run: JobRun, item: Claimed, exc: BaseException, *, worker_id: str) -> Outcome:
    """An attempt that crashed inside the worker: it counts, and the item is retried with
    backoff until max_attempts, then failed (never returned to pending uncounted)."""
    number = item.attempts + 1
    error = {"code": "internal_error", "message": f"The attempt crashed: {type(exc).__name__}."}
    attempt = _attempt_row(
        item,
        number=number,
        worker_id=worker_id,
        created=timezone.now(),
        error=error,
        model_name=item.params.get("model", ""),
        status_code=500,
        retryable=True,
    )
    outcome = Outcome(
        item=item, status=ItemStatus.FAILED, attempts=number, attempt=attempt, error=error
    )
    if number >= run.policy.max_attempts:
        return _failed(outcome, error)
    try:
        delay = run.policy.backoff(number, None)
    except Exception:  # the crash may be in the backoff itself: wait the longest backoff
        delay = run.policy.backoff_max
    return _retry(outcome, error, delay)


class ItemExecutor:
    """Runs one claimed item of a JobRun to an Outcome."""

    def __init__(self, *, db: Db, worker_id: str) -> None:
        self.db = db
        self.worker_id = worker_id
        self.upstream_calls = 0
        self._sync_pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._sync_pool:
            self._sync_pool.shutdown(wait=False, cancel_futures=True)

    async def admit(self, run: JobRun, item: Claimed) -> quota.Admission:
        """Count the item against its key's rpm/tpm (in a thread: the cache may be Redis);
        ItemThrottled when over them."""
        if not run.rate_limited:
            return quota.Admission()
        try:
            return await asyncio.to_thread(
                quota.item_admit, api_key=run.api_key, params=item.params
            )
        except quota.Throttled as exc:
            raise ItemThrottled(exc.retry_after) from exc

    async def model_for(self, run: JobRun, params: dict[str, Any]) -> tuple[ModelRanking, Any]:
        """The model an item runs on, resolved as streaming generation resolves it
        (`model_resolve` + `provider_check`), cached per job run."""
        name = params.get("model") or ""
        if name == services.AUTO:
            model = await self.db(services.model_auto, params["messages"])
            name = model.name
        cached = run.models.get(name)
        if cached is None:
            try:
                model = await self.db(model_resolve, name)
                provider_check(model)
            except ApiError as exc:
                raise ProviderError(
                    exc.message, code=exc.code, status=exc.status, retry_after=exc.retry_after
                ) from exc
            cached = run.models[name] = (model, provider_for(model))
        return cached

    async def call(self, run: JobRun, params: dict[str, Any]) -> tuple[dict, str, dict | None]:
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
        model, provider = await self.model_for(run, params)
        request = ChatRequest(
            messages=params["messages"],
            model=model.upstream_model,
            extra=params.get("extra") or {},
            **{k: params[k] for k in SAMPLING if params.get(k) is not None},
        )
        chunk = await provider.complete(request)
        return result_value(chunk.text, chunk.finish_reason or "stop"), model.name, chunk.usage

    async def execute(self, run: JobRun, item: Claimed) -> Outcome:
        """Admit, call, decide. ItemThrottled (rpm/tpm) or ItemBudgetExceeded before the
        call leave the item untouched."""
        hold = await self.budget_hold(run, item)
        try:
            admission = await self.admit(run, item)
        except ApiError as exc:  # the item alone exceeds the key's tokens per minute
            if hold is not None:
                await asyncio.to_thread(budget_settle, hold, None)
            error = {"code": exc.code, "message": exc.message}
            outcome = Outcome(item=item, status=ItemStatus.FAILED, attempts=item.attempts)
            return _failed(outcome, error)
        except BaseException:  # throttled, cancelled: nothing was spent
            if hold is not None:
                await asyncio.to_thread(budget_settle, hold, None)
            raise
        usage: dict | None = None
        outcome = None
        try:
            outcome, usage = await self._attempt(run, item)
            return outcome
        finally:
            if hold is not None:
                cost = outcome.cost_usd if outcome is not None else None
                await asyncio.to_thread(budget_settle, hold, cost)
            if admission.reserved:
                used = None
                if usage:
                    used = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
                await asyncio.to_thread(
                    quota.item_settle, api_key=run.api_key, admission=admission, used=used
                )

    async def budget_hold(self, run: JobRun, item: Claimed):
        """Reserve the item's worst-case cost against its key's budget (None: no budget);
        ItemBudgetExceeded when the budget is spent."""
        if not has_budget(run.api_key):
            return None
        model = None
        if run.executor is None and item.params.get("model") != services.AUTO:
            with contextlib.suppress(ProviderError):  # the attempt reports a bad model
                model = (await self.model_for(run, item.params))[0]
        params = item.params
        amount = worst_case_cost(
            model, count_message_tokens(params.get("messages") or []), params.get("max_tokens")
        )
        try:
            return await asyncio.to_thread(budget_reserve, api_key=run.api_key, amount=amount)
        except ApiError as exc:
            if exc.code != "budget_exceeded":
                raise
            raise ItemBudgetExceeded(exc.message) from exc

    def cost_of(self, run: JobRun, model_name: str, usage: dict | None):
        """An attempt's cost at its model's prices (request functions cost nothing)."""
        if run.executor is not None or not usage:
            return None
        cached = run.models.get(model_name)
        if cached is None:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return generation_cost(
            cached[0],
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            details.get("cached_tokens"),
        )

    async def _attempt(self, run: JobRun, item: Claimed) -> tuple[Outcome, dict | None]:
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
            result, model_name, usage = await self.call(run, item.params)
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
        cost = self.cost_of(run, model_name, usage)
        usage = usage or {}
        attempt = _attempt_row(
            item,
            cost_usd=cost,
            number=number,
            worker_id=self.worker_id,
            created=created,
            error=error,
            model_name=model_name,
            result=result,
            status_code=status_code,
            retryable=retryable,
            latency_ms=latency,
            usage=usage,
        )
        outcome = Outcome(
            item=item,
            status=ItemStatus.COMPLETED,
            attempts=number,
            result=result,
            model_name=model_name,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency,
            cost_usd=cost,
            finished_at=timezone.now(),
            attempt=attempt,
        )
        return await self._decide(run, item, outcome, error, retryable, retry_after), usage

    async def _decide(
        self,
        run: JobRun,
        item: Claimed,
        outcome: Outcome,
        error: dict | None,
        retryable: bool,
        retry_after: float | None,
    ) -> Outcome:
        number = outcome.attempts
        policy = run.policy
        if run.handler:
            try:
                decision = await self._hook(run, item, outcome.attempt)
            except Exception as exc:  # a crashing hook fails the attempt (and counts)
                logger.exception("Policy handler failed for batch item %s", item.id)
                error = {
                    "code": "handler_error",
                    "message": f"The policy handler raised {type(exc).__name__}.",
                }
                outcome.attempt.update(
                    status=BatchAttempt.Status.FAILED,
                    error_code=error["code"],
                    error_message=error["message"],
                    status_code=outcome.attempt["status_code"] or 500,
                    retryable=True,
                )
                if number < policy.max_attempts:
                    return _retry(outcome, error, policy.backoff(number, None))
                return _failed(outcome, error)
            if isinstance(decision, Done):
                outcome.result, outcome.error = result_value(decision.result), None
                return outcome
            if isinstance(decision, Fail):
                return _failed(outcome, {"code": "handler_failed", "message": decision.message})
            if isinstance(decision, Continue):
                if number >= policy.max_attempts:
                    return _failed(
                        outcome,
                        error
                        or {
                            "code": "max_attempts",
                            "message": "The handler asked for more attempts than max_attempts.",
                        },
                    )
                outcome.params = {**item.params, **decision.params}
                return _retry(outcome, error, 0.0)
        if error is None:
            return outcome
        if retryable and number < policy.max_attempts:
            return _retry(outcome, error, policy.backoff(number, retry_after))
        return _failed(outcome, error)

    async def _hook(self, run: JobRun, item: Claimed, attempt: dict) -> Any:
        previous = []
        if item.attempts:
            previous = await self.db(
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
        return run.handler(view, [*previous, attempt])
