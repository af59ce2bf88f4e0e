from django.core.management.base import BaseCommand

from tokenflow_site.assets import prepare_all


class Command(BaseCommand):
    help = "Prepare the offline model assets (idempotent; rebuilds a corrupt cache)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="rebuild even if cached")

    def handle(self, *args, force=False, **options):
        for asset, status in prepare_all(force=force).items():
            self.stdout.write(f"{asset}: {status}")
