"""Close generations a dead process left open (server killed mid-stream)."""

from datetime import timedelta

from django.utils import timezone

from routing.models import Generation

ABANDONED = "abandoned"


def generation_sweep_stale(*, older_than: timedelta) -> int:
    """Mark queued/streaming generations created before `older_than` ago as failed
    ("abandoned"); a live stream never lasts that long. Returns how many were closed."""
    cutoff = timezone.now() - older_than
    seconds = int(older_than.total_seconds())
    return Generation.objects.filter(
        status__in=[Generation.Status.QUEUED, Generation.Status.STREAMING],
        created_at__lt=cutoff,
    ).update(
        status=Generation.Status.FAILED,
        error_code=ABANDONED,
        error_message=(
            f"The process serving this generation stopped before it finished "
            f"(still open after {seconds} s)."
        ),
        finished_at=timezone.now(),
    )
