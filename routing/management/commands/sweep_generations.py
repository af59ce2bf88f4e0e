import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from rollups.services import rollup_pending
from routing.services.adaptation import router_adapt_due
from routing.services.sweep import generation_sweep_stale


class Command(BaseCommand):
    help = (
        "Fail generations left queued/streaming by a process that died, then roll the "
        "closed hours into the dashboard's rollups; with --every, keep doing it (make serve "
        "runs it that way)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.TOKENFLOW_STALE_GENERATION_SECONDS,
            help="queued rows: seconds since created (default TOKENFLOW_STALE_GENERATION_SECONDS)",
        )
        parser.add_argument(
            "--silent-for",
            type=float,
            default=settings.TOKENFLOW_STALE_STREAM_SECONDS,
            help="streaming rows: seconds since the last heartbeat "
            "(default TOKENFLOW_STALE_STREAM_SECONDS)",
        )
        parser.add_argument(
            "--every", type=float, default=0, help="seconds between sweeps (0: sweep once)"
        )

    def handle(self, *args, older_than, silent_for, every, **options):
        while True:
            try:
                closed = generation_sweep_stale(
                    older_than=timedelta(seconds=older_than),
                    silent_for=timedelta(seconds=silent_for),
                )
                rolled = rollup_pending()
                adapted = router_adapt_due() if every else []
            except Exception as exc:  # noqa: BLE001 - a database blip must not end the loop
                if not every:
                    raise
                self.stderr.write(f"sweep failed: {exc}")
                closed, rolled, adapted = 0, 0, []
            if closed or not every:
                self.stdout.write(f"{closed} abandoned generation(s) marked failed.")
            if rolled:
                self.stdout.write(f"{rolled} hour(s) rolled up for the dashboard.")
            for row in adapted:
                self.stdout.write(f"router adapted to recent traffic: {row}")
            if not every:
                return
            time.sleep(every)
            close_old_connections()  # a long-lived loop: drop connections the DB closed
