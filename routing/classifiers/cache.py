"""A routing-table version stamp shared by every process through the Django cache.

Staff edits to CategoryRoute (signals in routing.signals) replace the stamp; each
process compares it with the one its cached description embeddings were built under
and drops them when it changed. Under REDIS_URL the cache is Redis, so an edit made in
one process (the admin) reaches the API processes on their next request.
"""

import logging
import time
import uuid

from django.core.cache import cache

logger = logging.getLogger(__name__)

VERSION_KEY = "tokenflow:routes_version"
# While the cache is down, a process rebuilds its description embeddings this often.
UNAVAILABLE_STAMP_SECONDS = 30


def routes_version() -> str:
    """The current stamp (created on first use). While the cache is unreachable, a stamp
    that changes every UNAVAILABLE_STAMP_SECONDS: classification keeps working and sees
    route edits within that time."""
    try:
        version = cache.get(VERSION_KEY)
        if version is None:
            cache.add(VERSION_KEY, uuid.uuid4().hex, timeout=None)
            version = cache.get(VERSION_KEY) or ""
    except Exception:  # noqa: BLE001 - a broken cache must not break classification
        logger.warning("Cache unavailable: routes version stamp from the clock", exc_info=True)
        return f"unavailable-{int(time.time() // UNAVAILABLE_STAMP_SECONDS)}"
    return version


def routes_changed() -> None:
    """Invalidate every process's description cache (logged, not raised, if it is down:
    the edit is saved; other processes see it when their stamp changes)."""
    try:
        cache.set(VERSION_KEY, uuid.uuid4().hex, timeout=None)
    except Exception:  # noqa: BLE001
        logger.warning("Cache unavailable: route change not announced", exc_info=True)
