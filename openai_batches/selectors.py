"""Reads of the OpenAI Files and Batch API: ownership-checked lookups, OpenAI object shapes."""

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from accounts.permissions import Principal, owned_by, owned_get
from batches.models import BatchJob
from batches.selectors import batch_counts
from openai_batches.models import File, OpenAIBatch
from tokenflow_site.errors import ApiError

# BatchJob status -> OpenAI batch status (pause is a TokenFlow extension: in_progress).
STATUSES = {
    BatchJob.Status.PENDING: "in_progress",
    BatchJob.Status.RUNNING: "in_progress",
    BatchJob.Status.PAUSING: "in_progress",
    BatchJob.Status.PAUSED: "in_progress",
    BatchJob.Status.COMPLETED: "completed",
    BatchJob.Status.CANCELLED: "cancelled",
    BatchJob.Status.FAILED: "failed",
}
WINDOWS = {"24h": timedelta(hours=24)}


def _pk(public_id: Any, prefix: str, name: str) -> int:
    """`file-12` -> 12; anything else is the same 404 as a missing id."""
    if isinstance(public_id, str) and public_id.startswith(prefix):
        digits = public_id[len(prefix) :]
        if digits.isdigit() and len(digits) < 19:
            return int(digits)
    raise ApiError(f"{name} {str(public_id)[:60]!r} not found.", code="not_found", status=404)


def file_get(*, principal: Principal, file_id: Any) -> File:
    pk = _pk(file_id, "file-", "File")
    return owned_get(File.objects.all(), principal, pk=pk, name="File")


def file_path(file: File) -> Path:
    return Path(settings.TOKENFLOW_FILES_DIR) / file.path


def file_list(*, principal: Principal, purpose: str | None = None) -> QuerySet[File]:
    files = owned_by(File.objects.order_by("-id"), principal)
    return files.filter(purpose=purpose) if purpose else files


def batch_get(*, principal: Principal, batch_id: Any) -> OpenAIBatch:
    pk = _pk(batch_id, "batch_", "Batch")
    queryset = OpenAIBatch.objects.select_related("job")
    return owned_get(queryset, principal, pk=pk, name="Batch")


def batch_list(*, principal: Principal) -> QuerySet[OpenAIBatch]:
    return owned_by(OpenAIBatch.objects.select_related("job").order_by("-id"), principal)


def page(queryset: QuerySet, *, limit: int, after: str | None, prefix: str, name: str):
    """OpenAI's cursor page: objects older than `after`, newest first, and has_more."""
    if after:
        queryset = queryset.filter(pk__lt=_pk(after, prefix, name))
    rows = list(queryset[: limit + 1])
    return rows[:limit], len(rows) > limit


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "expires_at": None,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(batch: OpenAIBatch) -> dict[str, Any]:
    """OpenAI's batch object; `tokenflow` carries the job id and its own status (pause and
    resume live under /api/batches/<job_id>/)."""
    job = batch.job
    counts = batch_counts(job=job)
    status = STATUSES[job.status]
    finished = _ts(job.finished_at)
    errors = None
    if job.status == BatchJob.Status.FAILED:
        message = (job.statistics or {}).get("error") or "The batch failed."
        errors = {"object": "list", "data": [{"code": "batch_failed", "message": message}]}
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_key,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file.public_id if batch.output_file_id else None,
        "error_file_id": batch.error_file.public_id if batch.error_file_id else None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(job.started_at),
        "expires_at": _ts(batch.created_at + WINDOWS.get(batch.completion_window, timedelta())),
        "finalizing_at": None,
        "completed_at": finished if status == "completed" else None,
        "failed_at": finished if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": {
            "total": sum(counts.values()),
            "completed": counts["completed"],
            "failed": counts["failed"],
        },
        "metadata": batch.metadata,
        "tokenflow": {"job_id": job.pk, "status": job.status},
    }
