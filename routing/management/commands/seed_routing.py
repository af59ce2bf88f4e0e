from django.core.management.base import BaseCommand

from routing.models import CategoryRoute, ModelRanking
from routing.seed import seed_routing


class Command(BaseCommand):
    help = "Create the default categories and models that are missing (idempotent)."

    def handle(self, *args, **options):
        seed_routing(ModelRanking, CategoryRoute)
        self.stdout.write(
            f"{ModelRanking.objects.count()} models, {CategoryRoute.objects.count()} routes."
        )
