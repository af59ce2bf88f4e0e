from django.core.management.base import BaseCommand, CommandError

from response_cache.services import cache_purge
from routing.models import ModelRanking


class Command(BaseCommand):
    help = "Delete response-cache entries: the expired ones (for cron), a model's, or all."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--expired", action="store_true", help="Only expired entries.")
        group.add_argument("--all", action="store_true", help="Every entry.")
        group.add_argument("--model", help="Every entry of this model (its name).")

    def handle(self, *args, expired: bool, all: bool, model: str | None, **options):  # noqa: A002
        row = None
        if model is not None:
            row = ModelRanking.objects.filter(name=model).first()
            if row is None:
                raise CommandError(f"No model named {model!r}.")
        deleted = cache_purge(expired_only=expired, model=row)
        self.stdout.write(f"Purged {deleted} cache entries.")
