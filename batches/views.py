"""HTTP transport for batch jobs: parse, call a service or selector, render JSON / JSONL."""

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from batches import selectors, services
from batches.models import BatchJob
from tokenflow_site.errors import ApiError, parse_json_body

JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines")
OPTION_FIELDS = ("name", "model", "prompt_template", "concurrency", "max_attempts", "handler")
JSON_OPTION_FIELDS = ("parameters", "retry_policy")


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _check_csrf(request: HttpRequest) -> None:
    """Bearer-key clients need no CSRF token; a browser session does."""
    if request.api_key is None:
        reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if reason is not None:
            raise ApiError("CSRF verification failed.", code="forbidden", status=403)


def _job(request: HttpRequest, job_id: int) -> BatchJob:
    """A job the caller may see: its own API key's jobs, or any job for staff."""
    job = selectors.batch_get(job_id=job_id)
    if not _is_staff(request) and (request.api_key is None or job.api_key_id != request.api_key.pk):
        raise ApiError(f"Batch job {job_id} not found.", code="not_found", status=404)
    return job


def _json_option(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ApiError(f"'{name}' must be JSON.", field=name) from exc
    return value


def _create_input(request: HttpRequest) -> tuple[dict[str, Any], list, str]:
    """(options, [(line, item)], label) from a JSON body, a JSONL body or a multipart upload."""
    content_type = request.content_type or ""
    if content_type == "multipart/form-data":
        upload = request.FILES.get("file")
        if upload is None:
            raise ApiError("Upload the JSONL as the 'file' field.", code="required", field="file")
        options = {
            k: request.POST[k] for k in (*OPTION_FIELDS, *JSON_OPTION_FIELDS) if k in request.POST
        }
        return options, services.batch_jsonl_parse(upload.read()), "line"
    if content_type in JSONL_TYPES:
        options = {
            k: request.GET[k] for k in (*OPTION_FIELDS, *JSON_OPTION_FIELDS) if k in request.GET
        }
        return options, services.batch_jsonl_parse(request.body), "line"
    data = parse_json_body(request)
    items = data.get("items")
    if not isinstance(items, list):
        raise ApiError("'items' must be a list (or upload JSONL).", code="required", field="items")
    options = {k: data[k] for k in (*OPTION_FIELDS, *JSON_OPTION_FIELDS) if k in data}
    return options, [(None, item) for item in items], "items"


@csrf_exempt
@require_http_methods(["GET", "POST"])
def batch_collection(request: HttpRequest) -> JsonResponse:
    """POST: create a job (JSON items or a JSONL upload). GET: the caller's recent jobs."""
    if request.method == "GET":
        jobs = (
            BatchJob.objects.all()
            if _is_staff(request)
            else BatchJob.objects.filter(api_key=request.api_key)
        )
        data = [selectors.job_serialize(job, statistics=False) for job in jobs[:100]]
        return JsonResponse({"object": "list", "data": data})
    _check_csrf(request)
    options, items, label = _create_input(request)
    for name in JSON_OPTION_FIELDS:
        if name in options:
            options[name] = _json_option(options[name], name)
    handler = options.get("handler") or ""
    if handler and handler not in settings.TOKENFLOW_BATCH_HANDLERS and not _is_staff(request):
        raise ApiError(
            f"Handler {handler!r} is not allowed (see TOKENFLOW_BATCH_HANDLERS).",
            code="forbidden",
            status=403,
            field="handler",
        )
    job = services.batch_create(
        items=items,
        api_key=request.api_key,
        line_label=label,
        **{k: v for k, v in options.items() if v is not None},
    )
    return JsonResponse(selectors.job_serialize(job), status=201)


@require_GET
def batch_detail(request: HttpRequest, job_id: int) -> JsonResponse:
    return JsonResponse(selectors.job_serialize(_job(request, job_id)))


@csrf_exempt
@require_POST
def batch_pause(request: HttpRequest, job_id: int) -> JsonResponse:
    """?mode=soft (default: finish in-flight items) or ?mode=hard (return them to pending)."""
    _check_csrf(request)
    mode = request.GET.get("mode")
    if mode is None and request.body and request.content_type == "application/json":
        mode = parse_json_body(request).get("mode")
    job = services.batch_pause(job=_job(request, job_id), mode=mode or "soft")
    return JsonResponse(selectors.job_serialize(job))


@csrf_exempt
@require_POST
def batch_resume(request: HttpRequest, job_id: int) -> JsonResponse:
    _check_csrf(request)
    job = services.batch_resume(job=_job(request, job_id))
    return JsonResponse(selectors.job_serialize(job))


@csrf_exempt
@require_POST
def batch_cancel(request: HttpRequest, job_id: int) -> JsonResponse:
    _check_csrf(request)
    job = services.batch_cancel(job=_job(request, job_id))
    return JsonResponse(selectors.job_serialize(job))


@require_GET
def batch_results(request: HttpRequest, job_id: int) -> StreamingHttpResponse:
    """Finished items as JSONL in the OpenAI Batch output format (streamed)."""
    job = _job(request, job_id)
    status = request.GET.get("status")
    if status and status not in ("completed", "failed", "cancelled"):
        raise ApiError("'status' must be completed, failed or cancelled.", field="status")
    response = StreamingHttpResponse(
        selectors.batch_result_lines(job=job, status=status), content_type="application/jsonl"
    )
    response["Content-Disposition"] = f'attachment; filename="batch_{job.pk}_output.jsonl"'
    response["X-Accel-Buffering"] = "no"
    return response


def _int_arg(request: HttpRequest, name: str, default: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > high:
        raise ApiError(f"'{name}' must be an integer between 0 and {high}.", field=name)
    return int(raw)


@require_GET
def batch_items(request: HttpRequest, job_id: int) -> JsonResponse:
    """Items with their attempt trajectories, filtered by ?status=, paged by limit/offset."""
    job = _job(request, job_id)
    limit = _int_arg(request, "limit", 50, 500)
    offset = _int_arg(request, "offset", 0, 10**9)
    total, items = selectors.batch_items(
        job=job, status=request.GET.get("status"), limit=limit, offset=offset
    )
    return JsonResponse(
        {
            "object": "list",
            "total": total,
            "limit": limit,
            "offset": offset,
            "data": [selectors.item_serialize(item, attempts=True) for item in items],
        }
    )
