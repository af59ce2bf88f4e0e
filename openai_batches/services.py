"""Writes of the OpenAI Files and Batch API: keep an upload, create a batch from a file on
the batch engine (batches.services.batch_create), produce a finished batch's output and
error files from its results (batches.selectors.batch_result_lines)."""

import contextlib
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.permissions import Principal
from batches import services as batch_services
from batches.jsonl import jsonl_rows
from batches.models import BatchItem, BatchJob
from batches.selectors import batch_result_lines
from openai_batches.models import File, OpenAIBatch
from openai_batches.selectors import file_get, file_path
from openai_batches.uploads import StoredUpload, files_dir
from tokenflow_site.errors import ApiError

ENDPOINTS = ("/v1/chat/completions",)
# Body fields a batch line may carry: what the batch engine runs (messages + sampling).
BODY_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "user",
        "stream",
    }
)


def file_create(*, upload: StoredUpload, purpose: str, principal: Principal) -> File:
    """Keep an upload (already on disk as a .part file) as a File of the caller's."""
    final = upload.path.with_suffix(".jsonl")
    upload.path.rename(final)
    try:
        return File.objects.create(
            api_key=principal.api_key,
            purpose=purpose,
            filename=upload.name[:255],
            bytes=upload.size,
            sha256=upload.sha256,
            path=final.name,
        )
    except Exception:
        final.unlink(missing_ok=True)
        raise


def file_delete(*, file: File) -> None:
    path = file_path(file)
    file.delete()
    path.unlink(missing_ok=True)


def _line_item(line: int, raw: Any, endpoint: str) -> dict[str, Any]:
    """One input line as a batch-engine item; 400 naming the line for what it cannot run."""
    where = f"line {line}"
    if not isinstance(raw, dict):
        raise ApiError(f"{where}: each line must be a JSON object.", code="invalid_item")
    method = raw.get("method", "POST")
    if method != "POST":
        raise ApiError(f"{where}: 'method' must be POST.", code="invalid_item")
    url = raw.get("url", endpoint)
    if url != endpoint:
        raise ApiError(
            f"{where}: url {str(url)[:100]!r} differs from the batch endpoint {endpoint!r}.",
            code="invalid_item",
        )
    body = raw.get("body")
    if not isinstance(body, dict):
        raise ApiError(f"{where}: 'body' must be an object.", code="invalid_item")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise ApiError(
            f"{where}: body field(s) {', '.join(unknown[:5])} are not supported in batches "
            f"(supported: {', '.join(sorted(BODY_FIELDS))}).",
            code="unsupported_field",
        )
    if body.get("n", 1) != 1 or body.get("stream", False) is not False:
        raise ApiError(f"{where}: batches run n=1, stream=false.", code="invalid_item")
    body = {k: v for k, v in body.items() if k not in ("n", "stream", "user")}
    if "max_completion_tokens" in body:
        body.setdefault("max_tokens", body.pop("max_completion_tokens"))
    return {"custom_id": raw.get("custom_id"), "url": endpoint, "body": body}


def openai_batch_create(
    *,
    principal: Principal,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None = None,
) -> OpenAIBatch:
    """Validate every line of the caller's input file, then create the job and its items
    (one transaction) and the OpenAI batch that fronts it."""
    source = file_get(principal=principal, file_id=input_file_id)
    if source.purpose != File.Purpose.BATCH:
        raise ApiError(
            f"File {source.public_id} has purpose {source.purpose!r}, not 'batch'.",
            field="input_file_id",
        )
    if endpoint not in ENDPOINTS:
        raise ApiError(
            f"Endpoint {endpoint!r} is not supported; use {', '.join(ENDPOINTS)}.",
            code="unsupported_endpoint",
            field="endpoint",
        )
    with file_path(source).open("rb") as stream:
        rows = list(jsonl_rows(stream, field="input_file_id"))
    items = [(line, _line_item(line, raw, endpoint)) for line, raw in rows]
    with transaction.atomic():
        job = batch_services.batch_create(
            items=items,
            api_key=principal.api_key,
            name=f"openai {source.public_id}",
            line_label="line",
        )
        return OpenAIBatch.objects.create(
            job=job,
            api_key=principal.api_key,
            input_file=source,
            input_file_key=source.public_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata or None,
        )


def openai_batch_cancel(*, batch: OpenAIBatch) -> OpenAIBatch:
    batch.job = batch_services.batch_cancel(job=batch.job)
    return batch


def _write(job: BatchJob, statuses: list[str], label: str, batch: OpenAIBatch) -> File | None:
    """A file of the result lines of the job's items in `statuses` (None if none)."""
    if not job.items.filter(status__in=statuses).exists():
        return None
    path = files_dir() / f"{uuid.uuid4().hex}.jsonl"
    size = 0
    with path.open("w", encoding="utf-8") as handle:
        for status in statuses:
            for chunk in batch_result_lines(job=job, status=status):
                handle.write(chunk)
                size += len(chunk.encode())
    return File.objects.create(
        api_key=batch.api_key,
        purpose=File.Purpose.BATCH_OUTPUT,
        filename=f"{batch.public_id}_{label}.jsonl",
        bytes=size,
        path=path.name,
    )


def openai_batch_finalize(*, batch: OpenAIBatch) -> OpenAIBatch:
    """Once the job is finished, produce its output file (completed items) and error file
    (failed and cancelled ones) exactly once, even under concurrent reads."""
    job = batch.job
    if batch.finalized_at is not None or job.status not in BatchJob.TERMINAL:
        return batch
    Item = BatchItem.Status
    output = _write(job, [Item.COMPLETED], "output", batch)
    errors = _write(job, [Item.FAILED, Item.CANCELLED], "errors", batch)
    won = OpenAIBatch.objects.filter(pk=batch.pk, finalized_at__isnull=True).update(
        output_file=output, error_file=errors, finalized_at=timezone.now()
    )
    if not won:  # another request produced them first: keep theirs
        for produced in (output, errors):
            if produced is not None:
                with contextlib.suppress(OSError):
                    file_delete(file=produced)
    batch.refresh_from_db()
    return batch
