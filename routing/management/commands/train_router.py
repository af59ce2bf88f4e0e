from django.core.management.base import BaseCommand, CommandError

from routing.services.feedback import feedback_report
from routing.services.training import router_train
from tokenflow_site.errors import ApiError


class Command(BaseCommand):
    help = (
        "Fit the router head on every example and correction, with k-fold cross-validated "
        "accuracy against zero-shot; it is used by every process if it beats zero-shot."
    )

    def add_arguments(self, parser):
        parser.add_argument("--folds", type=int, default=5)
        parser.add_argument(
            "--force", action="store_true", help="activate it even if zero-shot is as good"
        )

    def handle(self, *args, folds, force, **options):
        if folds < 2:
            raise CommandError("--folds must be at least 2.")
        try:
            head, result = router_train(folds=folds, force=force)
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"feedback: {feedback_report()}")
        self.stdout.write(
            f"router v{head.pk}: {result.examples} examples, {len(result.labels)} categories "
            f"({', '.join(result.labels)})\n"
            f"{result.folds}-fold CV accuracy: head {result.cv_accuracy:.1%}, zero-shot "
            f"{result.zero_shot_accuracy:.1%} (same folds)"
        )
        for number, (head_acc, zero_acc) in enumerate(result.fold_accuracies, start=1):
            self.stdout.write(f"  fold {number}: head {head_acc:.1%}, zero-shot {zero_acc:.1%}")
        state = (
            "ACTIVE (used by every process)" if head.active else "inactive: zero-shot is as good"
        )
        self.stdout.write(f"router v{head.pk}: {state}")
