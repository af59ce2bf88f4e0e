"""A routing-table version stamp shared by every process through the Django cache.

Staff edits to CategoryRoute (signals in routing.signals) replace the stamp; each
process compares it with the one its cached description embeddings were built under
and drops them when it changed. Under REDIS_URL the cache is Redis, so an edit made in
one process (the admin) reaches the API processes on their next request.
"""

import uuid

from django.core.cache import cache

VERSION_KEY = "tokenflow:routes_version"


def routes_version() -> str:
    """The current stamp (created on first use)."""
    version = cache.get(VERSION_KEY)
    if version is None:
        cache.add(VERSION_KEY, uuid.uuid4().hex, timeout=None)
        version = cache.get(VERSION_KEY) or ""
    return version


def routes_changed() -> None:
    """Invalidate every process's description cache."""
    cache.set(VERSION_KEY, uuid.uuid4().hex, timeout=None)
