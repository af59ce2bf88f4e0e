"""A routing-table version stamp shared by every process.

Staff edits to CategoryRoute (signals in routing.signals) replace the stamp; each
process compares it with the one its cached routing table and description embeddings
were built under and drops them when it changed. Under REDIS_URL the cache is Redis, so
an edit made in one process (the admin) reaches the API processes on their next request.
On the embedded default the cache is per process (LocMemCache), so the stamp is a
fingerprint of the tables themselves instead (three small aggregate queries), which
every process (daphne, batch workers) reads alike.
"""

import logging
import time
import uuid

from django.core.cache import cache, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache

logger = logging.getLogger(__name__)

VERSION_KEY = "tokenflow:routes_version"
# While the cache is down, a process rebuilds its description embeddings this often.
UNAVAILABLE_STAMP_SECONDS = 30


def _cache_is_shared() -> bool:
    """False for a per-process cache (`cache` is a proxy: look at the backend itself)."""
    return not isinstance(caches["default"], LocMemCache | DummyCache)


def _tables_fingerprint() -> str:
    """Changes whenever a route, an example, the active head or an active adaptation is
    added, edited or removed."""
    from django.db.models import Count, Max

    from routing.models import CategoryExample, CategoryRoute, RouterAdaptation, RouterHead

    routes = CategoryRoute.objects.aggregate(n=Count("id"), t=Max("updated_at"))
    examples = CategoryExample.objects.aggregate(n=Count("id"), m=Max("id"))
    head = RouterHead.objects.filter(active=True).aggregate(m=Max("id"))
    adapted = RouterAdaptation.objects.filter(active=True).aggregate(n=Count("id"), m=Max("id"))
    return (
        f"db-{routes['n']}-{routes['t']}-{examples['n']}-{examples['m']}-{head['m']}"
        f"-{adapted['n']}-{adapted['m']}"
    )


def routes_table_version() -> str:
    """The stamp a process's cached routing table is checked against: the shared cache's
    stamp, or with a per-process cache the tables' fingerprint (one source for all)."""
    return routes_version() if _cache_is_shared() else _tables_fingerprint()


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
