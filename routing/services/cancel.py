"""Cancel a running generation from any process (`POST /api/generations/<id>/cancel`).

The request is a flag in the shared cache (Redis with REDIS_URL, so every process sees it);
the process streaming the generation reads it at each checkpoint (every
TOKENFLOW_CHECKPOINT_SECONDS, off the token path), stops the upstream, persists the row as
cancelled with its partial text and ends the client's stream with finish_reason
"cancelled". No socket or process affinity: the cancel may land on any web process.
"""

import logging
import time

from django.conf import settings
from django.core.cache import cache

from routing.models import Generation
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

OPEN = (Generation.Status.QUEUED, Generation.Status.STREAMING)


class CancelRequested(Exception):
    """Raised inside a stream whose generation someone asked to cancel."""


def _key(pk: int) -> str:
    return f"generation-cancel:{pk}"


def generation_cancel_request(*, generation: Generation) -> Generation:
    """Ask the process running `generation` to stop it (409 if it already ended)."""
    if generation.status not in OPEN:
        raise ApiError(
            f"Generation {generation.pk} already ended ({generation.status}).",
            code="not_running",
            status=409,
        )
    # Kept as long as a row may stay open; the stream ends long before.
    cache.set(_key(generation.pk), 1, timeout=int(settings.TOKENFLOW_STALE_GENERATION_SECONDS))
    return generation


# After a cache failure, cancel flags are not read for this long: a stalled Redis must not
# cost every checkpoint (they share the process's sync thread) its timeout.
CACHE_RETRY_SECONDS = 5.0
_cache_down_until = 0.0


def generation_cancel_requested(pk: int) -> bool:
    """Whether a cancel was asked for (False while the cache is unreachable)."""
    global _cache_down_until
    if time.monotonic() < _cache_down_until:
        return False
    try:
        return cache.get(_key(pk)) is not None
    except Exception:  # noqa: BLE001 - a broken cache must not break a stream
        _cache_down_until = time.monotonic() + CACHE_RETRY_SECONDS
        logger.warning("Cache unavailable: cancel flags not read for %.0f s", CACHE_RETRY_SECONDS)
        return False
