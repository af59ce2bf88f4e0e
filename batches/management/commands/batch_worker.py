import asyncio
import signal
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from batches.models import BatchJob
from batches.worker import BatchWorker


def progress_bar(progress: dict, width: int = 40) -> str:
    total, done = progress["total"], progress["done"]
    filled = int(width * done / total) if total else width
    counts = progress["counts"]
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {progress['percent']:5.1f}% {done}/{total} "
        f"ok={counts['completed']} failed={counts['failed']} running={counts['running']} "
        f"({progress['status']})"
    )


class Command(BaseCommand):
    help = (
        "Run batch jobs: an asyncio pool claiming items with leases. SIGTERM/SIGINT stop it "
        "gracefully (in-flight items finish); a second signal returns them to pending."
    )

    def add_arguments(self, parser):
        parser.add_argument("--job", type=int, help="Run only this job, in the foreground.")
        parser.add_argument("--concurrency", type=int, help="Cap per job for this worker.")
        parser.add_argument("--lease", type=float, help="Lease seconds (default from settings).")
        parser.add_argument("--poll", type=float, help="Seconds between job polls.")
        parser.add_argument("--worker-id", help="Name in item leases (default host:pid:rand).")
        parser.add_argument("--grace", type=float, default=30.0, help="Seconds to finish on stop.")
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")

    def handle(
        self,
        *args,
        job=None,
        concurrency=None,
        lease=None,
        poll=None,
        worker_id=None,
        grace=30.0,
        quiet=False,
        **options,
    ):
        if job is not None and not BatchJob.objects.filter(pk=job).exists():
            raise CommandError(f"Batch job {job} does not exist.")
        show = job is not None and not quiet
        tty = sys.stderr.isatty()

        def on_progress(progress: dict) -> None:
            line = progress_bar(progress)
            sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
            sys.stderr.flush()

        worker = BatchWorker(
            job_ids=[job] if job is not None else None,
            worker_id=worker_id,
            max_concurrency=concurrency,
            lease_seconds=lease,
            poll_seconds=poll,
            on_progress=on_progress if show else None,
            exit_when_idle=job is not None,
        )

        async def main() -> None:
            loop = asyncio.get_running_loop()
            signals = {"count": 0}

            def on_signal() -> None:
                signals["count"] += 1
                worker.stop(hard=signals["count"] > 1)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
            await worker.run(grace_seconds=grace)

        self.stderr.write(f"batch worker {worker.worker_id} started")
        # The worker uses its own DB threads: drop this thread's connection now, so the final
        # status read below opens a fresh one instead of failing on a connection the database
        # dropped while the worker ran (an outage or restart mid-job; the job completes, the
        # process exited 1).
        connection.close()
        asyncio.run(main())
        if show:
            sys.stderr.write("\n")
        if job is not None:
            status = BatchJob.objects.get(pk=job).status
            self.stdout.write(f"job {job}: {status}")
