from django.core.management.base import BaseCommand, CommandError

from routing.services.adaptation import LIMIT, MIN_PROMPTS, ROUNDS, router_adapt
from tokenflow_site.errors import ApiError


class Command(BaseCommand):
    help = (
        "Adapt the router to recent traffic without labels: learn a prototype per category "
        "from the recent classified prompts' zero-shot probabilities (self-training), for "
        "the routing table's label set and each frequent label set; used by every process."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--limit", type=int, default=LIMIT, help="most recent classifications read"
        )
        parser.add_argument(
            "--min-prompts",
            type=int,
            default=MIN_PROMPTS,
            help="distinct prompts a label set needs to be adapted",
        )
        parser.add_argument("--rounds", type=int, default=ROUNDS, help="self-training rounds")

    def handle(self, *args, limit, min_prompts, rounds, **options):
        try:
            rows = router_adapt(limit=limit, min_prompts=min_prompts, rounds=rounds)
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        for row in rows:
            report = row.report
            line = (
                f"adaptation v{row.pk} (ACTIVE, used by every process): {', '.join(row.labels)}; "
                f"{row.prompts} unlabelled prompts, {rounds} rounds; "
                f"{report['changed']} prompts change category"
            )
            if report.get("corrected_prompts"):
                line += (
                    f"; on their {report['corrected_prompts']} corrected prompts (labels not "
                    f"used, in-sample): zero-shot {report['corrected_accuracy_zero_shot']:.1%}, "
                    f"adapted {report['corrected_accuracy_adapted']:.1%}"
                )
            self.stdout.write(line)
            self.stdout.write(
                "  categories, zero-shot -> adapted: "
                + ", ".join(
                    f"{label} {report['zero_shot_counts'].get(label, 0)} -> "
                    f"{report['adapted_counts'].get(label, 0)}"
                    for label in row.labels
                )
            )
