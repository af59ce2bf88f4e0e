"""Batch job reads: progress, statistics, results (OpenAI Batch output format), items."""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from batches.models import BatchAttempt, BatchItem, BatchJob

ItemStatus = BatchItem.Status
RATE_WINDOW = 30  # seconds of recent completions used for throughput and ETA


def batch_counts(*, job: BatchJob) -> dict[str, int]:
    counts = {status: 0 for status in ItemStatus.values}
    rows = job.items.order_by().values_list("status").annotate(n=Count("id"))
    counts.update({status: n for status, n in rows})
    return counts


def batch_progress(*, job: BatchJob) -> dict[str, Any]:
    """The small message pushed over WebSocket and shown by progress bars."""
    counts = batch_counts(job=job)
    total = sum(counts.values())
    done = counts["completed"] + counts["failed"] + counts["cancelled"]
    cost = job.items.order_by().aggregate(cost=Sum("cost_usd"))["cost"]
    return {
        "job_id": job.pk,
        "status": job.status,
        "pause_reason": job.pause_reason or None,
        "total": total,
        "done": done,
        "counts": counts,
        "percent": round(100 * done / total, 1) if total else 100.0,
        "cost_usd": float(cost or 0),
    }


def _percentile(items, fraction: float, count: int) -> float | None:
    if not count:
        return None
    index = min(count - 1, int(fraction * count))
    return items.order_by("latency_ms").values_list("latency_ms", flat=True)[index]


def batch_statistics(*, job: BatchJob) -> dict[str, Any]:
    """Counts, throughput, ETA, tokens, latency percentiles and an error breakdown."""
    progress = batch_progress(job=job)
    counts = progress["counts"]
    items = job.items.order_by()
    now = timezone.now()
    finished = items.filter(status__in=[ItemStatus.COMPLETED, ItemStatus.FAILED])
    recent = finished.filter(finished_at__gte=now - timedelta(seconds=RATE_WINDOW)).count()
    last = finished.order_by("-finished_at").values_list("finished_at", flat=True).first()
    elapsed = (
        ((job.finished_at or last or now) - job.started_at).total_seconds()
        if (job.started_at)
        else 0
    )
    done = counts["completed"] + counts["failed"]
    overall = done / elapsed if elapsed > 0 else 0.0
    active = job.status in (*BatchJob.ACTIVE, BatchJob.Status.PAUSING)
    window = min(RATE_WINDOW, elapsed) if elapsed else 0
    rate = recent / window if active and window > 0 else overall
    remaining = counts["pending"] + counts["running"]
    tokens = items.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    completed = items.filter(status=ItemStatus.COMPLETED, latency_ms__isnull=False)
    n = completed.count()
    attempts = BatchAttempt.objects.filter(item__job=job).order_by()
    attempt_counts = dict(attempts.values_list("status").annotate(n=Count("id")))
    errors = dict(
        attempts.filter(status=BatchAttempt.Status.FAILED)
        .values_list("error_code")
        .annotate(n=Count("id"))
    )
    failed_items = dict(
        items.filter(status=ItemStatus.FAILED).values_list("error_code").annotate(n=Count("id"))
    )
    return {
        **progress,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "elapsed_seconds": round(elapsed, 3),
        "throughput_per_second": round(rate, 2),
        "overall_throughput_per_second": round(overall, 2),
        "eta_seconds": round(remaining / rate, 1) if rate > 0 and remaining else None,
        "tokens": {
            "prompt": tokens["prompt"] or 0,
            "completion": tokens["completion"] or 0,
            "total": (tokens["prompt"] or 0) + (tokens["completion"] or 0),
        },
        "latency_ms": {
            "p50": _percentile(completed, 0.5, n),
            "p90": _percentile(completed, 0.9, n),
            "p99": _percentile(completed, 0.99, n),
        },
        "attempts": {
            "total": sum(attempt_counts.values()),
            "succeeded": attempt_counts.get(BatchAttempt.Status.SUCCEEDED, 0),
            "failed": attempt_counts.get(BatchAttempt.Status.FAILED, 0),
        },
        "errors": {"attempts": errors, "failed_items": failed_items},
    }


def batch_item_list(*, job: BatchJob, status: str | None = None) -> QuerySet[BatchItem]:
    """A job's items in id order (optionally of one status), attempts prefetched."""
    items = job.items.order_by("id").prefetch_related("attempt_set")
    return items.filter(status=status) if status else items


def result_line(item: BatchItem) -> dict[str, Any]:
    """One line of the OpenAI Batch output format."""
    request_id = f"req_{item.pk}_{item.attempts}"
    if item.status == ItemStatus.COMPLETED:
        result = item.result or {}
        created = int(item.finished_at.timestamp()) if item.finished_at else 0
        body = {
            "id": f"chatcmpl-batch-{item.pk}",
            "object": "chat.completion",
            "created": created,
            "model": item.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.get("text", "")},
                    "finish_reason": result.get("finish_reason", "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": item.prompt_tokens or 0,
                "completion_tokens": item.completion_tokens or 0,
                "total_tokens": (item.prompt_tokens or 0) + (item.completion_tokens or 0),
            },
        }
        if "data" in result:
            body["data"] = result["data"]
        response, error = {"status_code": 200, "request_id": request_id, "body": body}, None
    else:
        response = None
        error = {
            "code": item.error_code or item.status,
            "message": (item.error or {}).get("message", item.status),
        }
    return {
        "id": f"batch_req_{item.pk}",
        "custom_id": item.custom_id,
        "response": response,
        "error": error,
    }


def batch_result_lines(*, job: BatchJob, status: str | None = None) -> Iterator[str]:
    """JSONL of finished items (completed and failed; cancelled too when asked for)."""
    statuses = [status] if status else [ItemStatus.COMPLETED, ItemStatus.FAILED]
    items = job.items.filter(status__in=statuses).order_by("id").defer("params")
    lines: list[str] = []
    for item in items.iterator(chunk_size=1000):
        lines.append(json.dumps(result_line(item), ensure_ascii=False) + "\n")
        if len(lines) >= 200:  # one chunk per 200 lines: few thread hops under ASGI
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)
