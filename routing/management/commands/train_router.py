from django.core.management.base import BaseCommand, CommandError

from routing.services.feedback import feedback_report
from routing.services.training import CV_ROUNDS, KINDS, ROUNDS, TOP_LAYERS, router_train
from tokenflow_site.errors import ApiError


class Command(BaseCommand):
    help = (
        "Train the router on every example and correction (default: fine-tune MiniLM's top "
        "layers SetFit-style; --kind linear: a linear head on frozen embeddings), with k-fold "
        "cross-validated accuracy against zero-shot; it is used by every process if it beats "
        "zero-shot."
    )

    def add_arguments(self, parser):
        parser.add_argument("--folds", type=int, default=5)
        parser.add_argument(
            "--force", action="store_true", help="activate it even if zero-shot is as good"
        )
        parser.add_argument("--kind", choices=KINDS, default="finetuned")
        parser.add_argument(
            "--top-layers", type=int, default=TOP_LAYERS, help="fine-tuned layers (from the top)"
        )
        parser.add_argument("--rounds", type=int, default=ROUNDS, help="pair-sampling rounds")
        parser.add_argument(
            "--cv-rounds", type=int, default=CV_ROUNDS, help="rounds in each CV fold"
        )

    def handle(self, *args, folds, force, kind, top_layers, rounds, cv_rounds, **options):
        if folds < 2:
            raise CommandError("--folds must be at least 2.")
        try:
            head, result = router_train(
                folds=folds,
                force=force,
                kind=kind,
                top_layers=top_layers,
                rounds=rounds,
                cv_rounds=cv_rounds,
            )
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"feedback: {feedback_report()}")
        self.stdout.write(
            f"router v{head.pk} ({head.get_kind_display()}"
            + (f", top {head.top_layers} layers" if head.top_layers else "")
            + f"): {result.examples} examples, {len(result.labels)} categories "
            f"({', '.join(result.labels)})\n"
            f"time: cross-validation {result.cv_seconds:.1f} s, final fit "
            f"{result.fit_seconds:.1f} s\n"
            f"{result.folds}-fold CV accuracy: head {result.cv_accuracy:.1%}, zero-shot "
            f"{result.zero_shot_accuracy:.1%} (same folds)"
        )
        for number, (head_acc, zero_acc) in enumerate(result.fold_accuracies, start=1):
            self.stdout.write(f"  fold {number}: head {head_acc:.1%}, zero-shot {zero_acc:.1%}")
        state = (
            "ACTIVE (used by every process)" if head.active else "inactive: zero-shot is as good"
        )
        self.stdout.write(f"router v{head.pk}: {state}")
