"""Batch job writes: create (JSON or JSONL), pause / resume / cancel, finalize."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework.exceptions import ValidationError

from accounts.models import ApiKey
from batches.models import BatchItem, BatchJob
from batches.policy import MAX_ATTEMPTS, HookNotAllowed, hook_load
from batches.quota import active_jobs_check, concurrency_for
from batches.serializers import RetryPolicySerializer
from batches.templates import template_parse, template_render
from routing.models import ModelRanking
from routing.serializers import GenerateRequestSerializer, SamplingSerializer
from routing.services.models import model_resolve
from tokenflow_site.api import text_check, validate
from tokenflow_site.errors import ApiError

AUTO = "auto"
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
Status = BatchJob.Status
ItemStatus = BatchItem.Status

logger = logging.getLogger(__name__)


# --- model "auto" ------------------------------------------------------------------------


def model_auto(messages: list[dict[str, str]]) -> ModelRanking:
    """Resolve "auto" for one item through settings.TOKENFLOW_BATCH_AUTO_SELECT
    (default: classify the prompt and take its route's first ready model)."""
    return import_string(settings.TOKENFLOW_BATCH_AUTO_SELECT)(messages)


# --- input parsing -----------------------------------------------------------------------


@dataclass
class ParsedItem:
    custom_id: str
    params: dict[str, Any]


def _where_error(exc: ApiError, where: str, extra: dict[str, Any]) -> ApiError:
    return ApiError(
        f"{where}: {exc.message}",
        code=exc.code,
        status=exc.status,
        field=exc.field,
        extra={**exc.extra, **extra},
    )


def _item_parse(
    raw: Any, *, job_model: str, template: str, defaults: dict[str, Any], needs_model: bool
) -> ParsedItem:
    if not isinstance(raw, dict):
        raise ApiError("each item must be a JSON object.", code="invalid_item")
    custom_id = raw.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip() or len(custom_id) > 200:
        raise ApiError(
            "'custom_id' must be a non-empty string of at most 200 characters.",
            code="invalid_custom_id",
            field="custom_id",
        )
    _storable(custom_id)
    url = raw.get("url")
    if url is not None and url not in CHAT_URLS:
        raise ApiError(f"url {url!r} is not supported; use /v1/chat/completions.", field="url")
    body = raw.get("body", raw.get("params"))
    if not isinstance(body, dict):
        raise ApiError("'body' must be a JSON object.", code="invalid_item", field="body")
    body = dict(body)
    if not needs_model:  # a Python request function gets the body as it is
        _storable(body)
        return ParsedItem(custom_id=custom_id, params=body)
    if "variables" in body:
        variables = body.pop("variables")
        if not template or not isinstance(variables, dict):
            raise ApiError(
                "'variables' needs the job's prompt_template and must be an object.",
                field="variables",
            )
        body["messages"] = [{"role": "user", "content": template_render(template, variables)}]
    elif template and "messages" not in body and "prompt" not in body:
        body["prompt"] = template
    model = body.get("model") or job_model
    if needs_model and not (isinstance(model, str) and model.strip()):
        raise ApiError("'model' is required (in the body or on the job).", field="model")
    request = validate(GenerateRequestSerializer, {**defaults, **body, "model": model})
    messages, params = request.messages, request.params.as_dict()
    extra = body.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise ApiError("'extra' must be an object.", field="extra")
    stored = {"model": model or "", "messages": messages, **params}
    if extra:
        stored["extra"] = extra
    _storable(stored)
    return ParsedItem(custom_id=custom_id, params=stored)


def _storable(value: Any) -> None:
    """400 for text no database column can hold (PostgreSQL refuses NUL in text and jsonb,
    and lone surrogates anywhere), in any key or value of an item."""
    if isinstance(value, str):
        try:
            text_check(value)
        except ValidationError as exc:
            raise ApiError(f"the item {exc.detail[0]}", code="invalid_value", field="body") from exc
    elif isinstance(value, dict):
        for key, inner in value.items():
            _storable(key)
            _storable(inner)
    elif isinstance(value, list):
        for inner in value:
            _storable(inner)


def _bounded_int(value: Any, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ApiError(f"'{name}' must be an integer between 1 and {high}.", field=name)
    return value


def _retry_policy(value: Any) -> dict[str, Any]:
    """The job's retry policy through the API's serializer (bounds included), for callers
    that skip the HTTP layer (the Python client)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError("'retry_policy' must be an object.", field="retry_policy")
    validate(RetryPolicySerializer, value)
    return value


def _hooks_check(*, handler: str, executor: str) -> None:
    """Only allowlisted hooks (TOKENFLOW_BATCH_HANDLERS), whoever creates the job."""
    for path, is_executor, field in ((handler, False, "handler"), (executor, True, "executor")):
        try:
            hook_load(path, executor=is_executor)
        except HookNotAllowed as exc:
            raise ApiError(str(exc), code="forbidden", status=403, field=field) from exc
        except ImportError as exc:
            raise ApiError(f"Cannot import {field} {path!r}.", field=field) from exc


def batch_create(
    *,
    items: Iterable[tuple[int | None, Any]],
    api_key: ApiKey | None = None,
    name: str = "",
    model: str = "",
    prompt_template: str = "",
    parameters: dict[str, Any] | None = None,
    concurrency: Any = None,
    max_attempts: Any = None,
    retry_policy: Any = None,
    handler: str = "",
    executor: str = "",
    line_label: str = "items",
) -> BatchJob:
    """Validate every item first, then create the job and its items in one transaction.

    `items` are (line number or None, raw item); errors name the line (JSONL) or index.
    """
    parameters = parameters or {}
    if not isinstance(parameters, dict):
        raise ApiError("'parameters' must be an object.", field="parameters")
    validate(SamplingSerializer, parameters)
    if not isinstance(model, str) or not isinstance(name, str):
        raise ApiError("'model' and 'name' must be strings.", field="model")
    if not isinstance(prompt_template, str):
        raise ApiError("'prompt_template' must be a string.", field="prompt_template")
    if prompt_template:
        template_parse(prompt_template)
    if concurrency is not None:
        concurrency = _bounded_int(
            concurrency, "concurrency", 1, settings.TOKENFLOW_BATCH_MAX_CONCURRENCY
        )
    concurrency = concurrency_for(
        api_key=api_key,
        requested=concurrency,
        default=settings.TOKENFLOW_BATCH_DEFAULT_CONCURRENCY,
    )
    max_attempts = _bounded_int(
        max_attempts, "max_attempts", settings.TOKENFLOW_BATCH_MAX_ATTEMPTS, MAX_ATTEMPTS
    )
    retry_policy = _retry_policy(retry_policy)
    _hooks_check(handler=handler, executor=executor)
    if api_key is not None:
        _active_jobs_check(api_key)  # early, before parsing a large upload

    parsed: list[ParsedItem] = []
    seen: dict[str, str] = {}
    limit = settings.TOKENFLOW_BATCH_MAX_ITEMS
    for index, (line, raw) in enumerate(items):
        where = f"line {line}" if line is not None else f"{line_label}[{index}]"
        location = {"line": line} if line is not None else {"index": index}
        if len(parsed) >= limit:
            raise ApiError(
                f"{where}: too many items; the limit is {limit} per job "
                "(TOKENFLOW_BATCH_MAX_ITEMS). Nothing was created.",
                code="too_many_items",
                status=413,
                extra={"limit": limit, **location},
            )
        try:
            item = _item_parse(
                raw,
                job_model=model,
                template=prompt_template,
                defaults=parameters,
                needs_model=not executor,
            )
        except ApiError as exc:
            raise _where_error(exc, where, location) from exc
        if item.custom_id in seen:
            raise ApiError(
                f"{where}: duplicate custom_id {item.custom_id!r} "
                f"(first at {seen[item.custom_id]}).",
                code="duplicate_custom_id",
                field="custom_id",
                extra=location,
            )
        seen[item.custom_id] = where
        parsed.append(item)
    if not parsed:
        raise ApiError("The job has no items.", code="empty", field="items")
    if not executor:
        names = {item.params["model"] for item in parsed} | ({model} if model else set())
        for model_name in sorted(names - {AUTO}):
            model_resolve(model_name)

    with transaction.atomic():
        if api_key is not None:
            _active_jobs_check(api_key, lock=True)  # again, serialised on the key's row
        job = BatchJob.objects.create(
            name=name,
            api_key=api_key,
            model=model,
            prompt_template=prompt_template,
            parameters=parameters,
            concurrency=concurrency,
            max_attempts=max_attempts,
            retry_policy=retry_policy,
            handler=handler,
            executor=executor,
            total_items=len(parsed),
        )
        BatchItem.objects.bulk_create(
            (BatchItem(job=job, custom_id=i.custom_id, params=i.params) for i in parsed),
            batch_size=1000,
        )
    return job


def _active_jobs_check(api_key: ApiKey, *, lock: bool = False) -> None:
    if lock:  # two concurrent creations for one key cannot both pass the count
        api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    active = BatchJob.objects.filter(api_key=api_key).exclude(status__in=BatchJob.TERMINAL)
    active_jobs_check(api_key=api_key, active=active.count())


def batch_items_add(*, job: BatchJob, params: list[tuple[str, dict[str, Any]]]) -> int:
    """Append items whose custom_id the job lacks (the Python client resuming a script)."""
    existing = set(job.items.values_list("custom_id", flat=True))
    new = [BatchItem(job=job, custom_id=c, params=p) for c, p in params if c not in existing]
    with transaction.atomic():
        BatchItem.objects.bulk_create(new, batch_size=1000)
        job.total_items = job.items.count()
        fields = ["total_items"]
        if new and job.status == Status.COMPLETED:
            job.status, job.finished_at = Status.RUNNING, None
            fields += ["status", "finished_at"]
        job.save(update_fields=fields)
    return len(new)


# --- state transitions -------------------------------------------------------------------


def _conflict(job: BatchJob, action: str) -> ApiError:
    return ApiError(
        f"Cannot {action} job {job.pk}: it is {job.status}.",
        code="invalid_state",
        status=409,
        extra={"status": job.status},
    )


def _locked(job_id: int) -> BatchJob:
    return BatchJob.objects.select_for_update().get(pk=job_id)


def batch_pause(*, job: BatchJob, mode: str = "soft") -> BatchJob:
    """Soft: stop claiming, let in-flight items finish. Hard: in-flight items go back to
    pending at once (no attempt counted); workers drop their now-stale results."""
    if mode not in ("soft", "hard"):
        raise ApiError("'mode' must be 'soft' or 'hard'.", field="mode")
    with transaction.atomic():
        job = _locked(job.pk)
        allowed = (*BatchJob.ACTIVE, Status.PAUSING) if mode == "hard" else BatchJob.ACTIVE
        if job.status not in allowed:
            raise _conflict(job, f"{mode}-pause")
        running = job.items.filter(status=ItemStatus.RUNNING)
        now = timezone.now()
        if mode == "hard":
            _release(running)
            job.status = Status.PAUSED
        else:
            _release(running.filter(lease_expires_at__lt=now))
            job.status = Status.PAUSING if running.exists() else Status.PAUSED
        job.save(update_fields=["status"])
    return job


def batch_pause_for(*, job_id: int, reason: str) -> str:
    """The system pauses an active job (e.g. its key's budget is spent) and says why;
    the job's status afterwards. A resume clears the reason."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in BatchJob.ACTIVE:
            running = job.items.filter(status=ItemStatus.RUNNING).exists()
            job.status = Status.PAUSING if running else Status.PAUSED
            job.pause_reason = reason[:300]
            job.save(update_fields=["status", "pause_reason"])
            logger.warning("Batch job %s paused: %s", job.pk, reason)
        return job.status


def _release(items) -> int:
    return items.update(status=ItemStatus.PENDING, lease_token="", lease_expires_at=None, worker="")


def batch_resume(*, job: BatchJob) -> BatchJob:
    with transaction.atomic():
        job = _locked(job.pk)
        if job.status not in (Status.PAUSED, Status.PAUSING, Status.FAILED):
            raise _conflict(job, "resume")
        job.status = Status.RUNNING if job.started_at else Status.PENDING
        job.finished_at = None
        job.pause_reason = ""
        job.save(update_fields=["status", "finished_at", "pause_reason"])
    return job


def batch_cancel(*, job: BatchJob) -> BatchJob:
    """Cancel the job and every item not finished yet."""
    from batches.selectors import batch_statistics

    with transaction.atomic():
        job = _locked(job.pk)
        if job.status in BatchJob.TERMINAL:
            raise _conflict(job, "cancel")
        now = timezone.now()
        job.items.filter(status__in=[ItemStatus.PENDING, ItemStatus.RUNNING]).update(
            status=ItemStatus.CANCELLED,
            lease_token="",
            lease_expires_at=None,
            finished_at=now,
            error_code="cancelled",
            error={"code": "cancelled", "message": "The job was cancelled."},
        )
        job.status, job.finished_at = Status.CANCELLED, now
        job.statistics = batch_statistics(job=job)
        job.save(update_fields=["status", "finished_at", "statistics"])
    return job


def batch_fail(*, job_id: int, message: str) -> None:
    """The job cannot run at all (e.g. its handler or request function cannot be imported)."""
    BatchJob.objects.filter(pk=job_id, status__in=BatchJob.ACTIVE).update(
        status=Status.FAILED,
        finished_at=timezone.now(),
        statistics={"error": message},
    )


def batch_finalize(*, job_id: int) -> str:
    """pausing -> paused once nothing runs; pending/running -> completed once nothing is left."""
    from batches.selectors import batch_statistics

    with transaction.atomic():
        job = _locked(job_id)
        items = job.items
        if job.status == Status.PAUSING:
            if not items.filter(status=ItemStatus.RUNNING).exists():
                job.status = Status.PAUSED
                job.save(update_fields=["status"])
        elif (
            job.status in BatchJob.ACTIVE
            and not items.filter(status__in=[ItemStatus.PENDING, ItemStatus.RUNNING]).exists()
        ):
            job.status, job.finished_at = Status.COMPLETED, timezone.now()
            job.started_at = job.started_at or job.finished_at
            job.statistics = batch_statistics(job=job)
            job.save(update_fields=["status", "finished_at", "started_at", "statistics"])
        return job.status


def batch_release_expired(*, job_id: int) -> int:
    """Running items whose lease expired (their worker died) become claimable again."""
    return _release(
        BatchItem.objects.filter(
            job_id=job_id,
            status=ItemStatus.RUNNING,
            lease_expires_at__lt=timezone.now() - timedelta(seconds=0),
        )
    )
