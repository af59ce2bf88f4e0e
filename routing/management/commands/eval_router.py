import json

from django.core.management.base import BaseCommand, CommandError
from rest_framework import serializers

from routing.serializers import CategoriesField
from routing.services.evaluation import router_evaluate


class Command(BaseCommand):
    help = (
        'Evaluate the routing table on FILE.jsonl (lines {"prompt", "label"}): accuracy, '
        "confusion table, expected calibration error and p50 latency."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument(
            "--categories",
            help="JSON file with a possible_categories list to try instead of the routing "
            "table (check a change before saving it).",
        )
        parser.add_argument(
            "--no-head",
            action="store_true",
            help="ignore the trained router and the traffic adaptation",
        )
        parser.add_argument("--failures", type=int, default=20, help="misses to print")

    def handle(self, *args, file, categories, no_head, failures, **options):
        rows = []
        try:
            with open(file, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not (
                        isinstance(row, dict)
                        and isinstance(row.get("prompt"), str)
                        and isinstance(row.get("label"), str)
                        and row["prompt"].strip()
                    ):
                        raise CommandError(f'{file}:{number}: expected {{"prompt", "label"}}.')
                    rows.append(row)
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"{file}: {exc}") from exc
        if not rows:
            raise CommandError(f"{file} has no rows.")
        chosen = None
        if categories:
            try:
                with open(categories, encoding="utf-8") as handle:
                    chosen = CategoriesField().to_internal_value(json.load(handle))
            except (OSError, json.JSONDecodeError, serializers.ValidationError) as exc:
                raise CommandError(f"{categories}: {exc}") from exc
        try:
            result = router_evaluate(rows, chosen, use_head=not no_head)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"engine: {result.engine}")
        self.stdout.write(
            f"accuracy: {result.accuracy:.1%} ({result.correct}/{result.total})\n"
            f"expected calibration error (10 bins): {result.ece:.3f}\n"
            f"p50 latency per prompt (in process): {result.p50_ms:.1f} ms\n"
        )
        self.stdout.write(result.table())
        for prompt, truth, predicted, confidence in result.failures[:failures]:
            self.stdout.write(f"  MISS [{truth} -> {predicted} {confidence:.2f}] {prompt[:90]}")
