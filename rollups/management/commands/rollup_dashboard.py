from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Min
from django.utils import timezone

from rollups.services import rollup_hours
from routing.models import Generation


class Command(BaseCommand):
    help = (
        "Backfill the dashboard's hourly rollups from the raw rows (idempotent: rolled hours "
        "are replaced). Default: the last 8 days; --all: since the first generation."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=8, help="hours of the last N days")
        parser.add_argument("--all", action="store_true", help="since the first generation")

    def handle(self, *args, days, all, **options):
        now = timezone.now()
        if all:
            start = Generation.objects.aggregate(first=Min("created_at"))["first"] or now
        elif not 0 < days <= 3660:
            raise CommandError("--days must be between 0 and 3660.")
        else:
            start = now - timedelta(days=days)
        rolled = rollup_hours(start, now, now=now)
        self.stdout.write(f"{len(rolled)} hour(s) rolled up since {start:%Y-%m-%d %H:%M} UTC.")
