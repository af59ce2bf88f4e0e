from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand

from routing.services.sweep import generation_sweep_stale


class Command(BaseCommand):
    help = "Fail generations left queued/streaming by a process that died (run at start-up)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.TOKENFLOW_STALE_GENERATION_SECONDS,
            help="seconds (default TOKENFLOW_STALE_GENERATION_SECONDS)",
        )

    def handle(self, *args, older_than, **options):
        closed = generation_sweep_stale(older_than=timedelta(seconds=older_than))
        self.stdout.write(f"{closed} abandoned generation(s) marked failed.")
