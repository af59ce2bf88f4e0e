"""Close generations a dead process left open (server killed mid-stream).

Streaming rows write a heartbeat (and their partial text) every
TOKENFLOW_CHECKPOINT_SECONDS, so one whose heartbeat is older than
TOKENFLOW_STALE_STREAM_SECONDS belongs to a dead process; queued rows (waiting for a
local model, say) have no heartbeat and are given TOKENFLOW_STALE_GENERATION_SECONDS.
`manage.py sweep_generations --every N` runs this in a loop (make serve starts it).
"""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from routing.models import Generation
from routing.services.generation import cost_fill

ABANDONED = "abandoned"


def generation_sweep_stale(*, older_than: timedelta, silent_for: timedelta | None = None) -> int:
    """Fail ("abandoned", partial text kept, cost_usd what it used) queued rows created
    more than `older_than` ago and streaming rows whose last heartbeat is older than
    `silent_for` (default `older_than`). Returns how many were closed."""
    now = timezone.now()
    silent_for = silent_for or older_than
    Status = Generation.Status
    stale = (
        Q(status=Status.QUEUED, created_at__lt=now - older_than)
        | Q(
            status=Status.STREAMING,
            heartbeat_at__lt=now - silent_for,
        )
        | Q(status=Status.STREAMING, heartbeat_at__isnull=True, created_at__lt=now - older_than)
    )
    closed = 0
    for generation in Generation.objects.filter(stale).select_related("model").iterator():
        generation.status = Status.FAILED
        cost_fill(generation)  # what it used: its prompt and partial output, if it started
        # Still stale (its process may have been only slow): one conditional UPDATE per row.
        closed += Generation.objects.filter(stale, pk=generation.pk).update(
            status=Status.FAILED,
            error_code=ABANDONED,
            error_message="The process serving this generation stopped before it finished.",
            finished_at=now,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            cost_usd=generation.cost_usd,
        )
    return closed
