"""A Python API for scripts and notebooks, backed by the batch tables (so it survives crashes).

    task = TokenFlowTask(request_fn=call_llm, request_params=[{"prompt": p} for p in prompts],
                         name="synth-v1")
    task.run(n_workers=32)        # returns at once; the work runs in a background thread
    task.wait_for_done()          # or task.soft_stop() / task.hard_stop()
    task.results()                # {custom_id: result}

Without `request_fn` the items go through the gateway's providers (`model=` or each item's
body "model"). Re-running a script with the same `name` resumes the job: finished items are
kept, missing ones are added, unfinished ones run.
"""

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.db import close_old_connections

from batches import services
from batches.models import BatchItem, BatchJob
from batches.selectors import batch_progress, batch_statistics, result_line
from batches.worker import LOCAL_PREFIX, BatchWorker


class TokenFlowTask:
    def __init__(
        self,
        *,
        request_params: Iterable[dict[str, Any]],
        request_fn: Callable[[dict[str, Any]], Any] | None = None,
        name: str = "",
        model: str = "",
        max_attempts: int = 3,
        handler: str = "",
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        params = list(request_params)
        items = [
            (str(p.get("custom_id", index)), {k: v for k, v in p.items() if k != "custom_id"})
            for index, p in enumerate(params)
        ]
        if not name:
            digest = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode())
            name = f"task-{digest.hexdigest()[:12]}"
        self.name = name
        self.request_fn = request_fn
        self.executor = f"{LOCAL_PREFIX}{name}" if request_fn is not None else ""
        self._worker: BatchWorker | None = None
        self._thread: threading.Thread | None = None
        job = (
            BatchJob.objects.filter(name=name, executor=self.executor)
            .exclude(status=BatchJob.Status.CANCELLED)
            .order_by("-created_at")
            .first()
        )
        if job is None:
            job = services.batch_create(
                items=[(None, {"custom_id": c, "body": body}) for c, body in items],
                name=name,
                model=model,
                max_attempts=max_attempts,
                handler=handler,
                retry_policy=retry_policy,
                executor=self.executor,
            )
        else:
            if not self.executor:
                parsed = [
                    services._item_parse(
                        {"custom_id": c, "body": body},
                        job_model=job.model,
                        template=job.prompt_template,
                        defaults=job.parameters,
                        needs_model=True,
                    )
                    for c, body in items
                ]
                items = [(p.custom_id, p.params) for p in parsed]
            services.batch_items_add(job=job, params=items)
        self.job = job

    # --- running ---------------------------------------------------------------------------

    def run(self, n_workers: int = 8, *, wait: bool = False) -> "TokenFlowTask":
        """Start (or resume) the job with `n_workers` concurrent requests in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("This task is already running.")
        job = BatchJob.objects.get(pk=self.job.pk)
        job.concurrency = n_workers
        job.save(update_fields=["concurrency"])
        if job.status in (BatchJob.Status.PAUSED, BatchJob.Status.PAUSING, BatchJob.Status.FAILED):
            services.batch_resume(job=job)
        if self.executor:
            # Only this process can run a local request function: a crashed run's leases are stale.
            BatchItem.objects.filter(job=job, status=BatchItem.Status.RUNNING).update(
                status=BatchItem.Status.PENDING, lease_token="", lease_expires_at=None, worker=""
            )
        executors = {self.executor: self.request_fn} if self.executor else {}
        self._worker = BatchWorker(
            job_ids=[job.pk], executors=executors, exit_when_idle=True, poll_seconds=0.1
        )
        self._thread = threading.Thread(
            target=self._run_thread, name=f"tokenflow-task-{job.pk}", daemon=True
        )
        self._thread.start()
        if wait:
            self.wait_for_done()
        return self

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._worker.run())
        finally:
            close_old_connections()

    def soft_stop(self) -> None:
        """Stop claiming; in-flight requests finish. Resume later with run()."""
        services.batch_pause(job=self.job, mode="soft")

    def hard_stop(self) -> None:
        """Stop now; in-flight requests go back to pending (no attempt counted)."""
        services.batch_pause(job=self.job, mode="hard")

    def wait_for_done(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is finished or paused; return its statistics."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.statistics()

    # --- reading ---------------------------------------------------------------------------

    def refresh(self) -> BatchJob:
        self.job = BatchJob.objects.get(pk=self.job.pk)
        return self.job

    def progress(self) -> dict[str, Any]:
        return batch_progress(job=self.refresh())

    def statistics(self) -> dict[str, Any]:
        return batch_statistics(job=self.refresh())

    def results(self) -> dict[str, Any]:
        """{custom_id: result} of completed items ({"text": ..., ...})."""
        items = BatchItem.objects.filter(job=self.job, status=BatchItem.Status.COMPLETED)
        return dict(items.values_list("custom_id", "result"))

    def errors(self) -> dict[str, Any]:
        items = BatchItem.objects.filter(job=self.job, status=BatchItem.Status.FAILED)
        return {item.custom_id: result_line(item)["error"] for item in items}
