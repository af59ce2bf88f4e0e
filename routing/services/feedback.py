"""Feedback on classifications: the right label, from the key that asked or from staff.

Every correction becomes an example utterance of its category (source "correction",
de-duplicated), so the next classification of a similar prompt, in any process, already
knows it (routing.signals invalidates every process's routing table).
"""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from routing.models import MAX_EXAMPLE_CHARS, CategoryExample, Classification, example_key
from tokenflow_site.errors import ApiError


def feedback_apply(
    classification: Classification, category: str, *, source: str = "key", user=None
) -> CategoryExample | None:
    """Record `category` as the right label of `classification` and store the prompt as
    an example of it (replacing the example an earlier feedback on it made). 400 if the
    category was not one of the classification's; all or nothing."""
    labels = classification.labels()
    match = next((label for label in labels if label.casefold() == category.casefold()), None)
    if match is None:
        raise ApiError(
            f"{category!r} is not one of this classification's categories ({', '.join(labels)}).",
            code="unknown_category",
            status=400,
            field="category",
        )
    text = (classification.prompt.text if classification.prompt else "").strip()
    with transaction.atomic():
        classification = Classification.objects.select_for_update().get(pk=classification.pk)
        classification.feedback_category = match
        classification.feedback_source = source
        classification.feedback_at = timezone.now()
        classification.save(update_fields=["feedback_category", "feedback_source", "feedback_at"])
        CategoryExample.objects.filter(
            classification=classification, source=CategoryExample.Source.CORRECTION
        ).delete()
        if not text:
            return None
        text = text[:MAX_EXAMPLE_CHARS]  # MiniLM reads 256 tokens (~1000 characters) anyway
        existing = CategoryExample.objects.filter(category=match, key=example_key(text)).first()
        if existing is not None:
            return existing  # the same utterance is already an example of the category
        return CategoryExample.objects.create(
            category=match,
            text=text,
            source=CategoryExample.Source.CORRECTION,
            classification=classification,
            created_by=user,
        )


@dataclass
class FeedbackReport:
    corrections: int  # classifications with feedback
    examples: int  # examples made from corrections
    window: int  # the last N classifications with feedback...
    correct: int  # ...that the classifier had right

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.window if self.window else None

    def __str__(self) -> str:
        if not self.window:
            return f"{self.corrections} corrections"
        return (
            f"{self.corrections} corrections ({self.examples} examples); accuracy of the last "
            f"{self.window} corrected classifications: {self.accuracy:.1%} "
            f"({self.correct}/{self.window})"
        )


def feedback_report(last: int = 100) -> FeedbackReport:
    with_feedback = Classification.objects.exclude(feedback_category="")
    recent = list(
        with_feedback.order_by("-feedback_at", "-pk").values_list(
            "top_category", "feedback_category"
        )[:last]
    )
    return FeedbackReport(
        corrections=with_feedback.count(),
        examples=CategoryExample.objects.filter(source=CategoryExample.Source.CORRECTION).count(),
        window=len(recent),
        correct=sum(top == right for top, right in recent),
    )
