"""Reads for API keys."""

import copy
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, hash_key

LAST_USED_RESOLUTION = timedelta(minutes=1)
# Issued keys are 46 characters; anything much longer is not worth hashing.
MAX_RAW_KEY_CHARS = 256

# Per-process cache of active keys (with their user), keyed by key hash. An entry lives at
# most KEY_CACHE_SECONDS, so a key revoked (or its user deactivated, or its limits changed)
# in any process takes effect everywhere within that time; saves in this process drop the
# entry at once (signals below). Unknown and revoked keys are never cached: a key issued in
# another process works at once, and random guesses cannot fill the cache.
KEY_CACHE_SECONDS = 1.0
KEY_CACHE_MAX_ENTRIES = 10_000
_key_cache: dict[str, tuple[float, ApiKey]] = {}


def _could_be_a_key(raw: object) -> bool:
    """A string a key could be: bounded and encodable (a WebSocket `auth` message can carry
    any JSON value, a lone surrogate included)."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_RAW_KEY_CHARS:
        return False
    try:
        raw.encode()
    except UnicodeEncodeError:
        return False
    return True


def _active_key(key_hash: str) -> ApiKey | None:
    """The active key for a hash: from this process's cache while fresh, else the database.
    Each caller gets its own copy (requests annotate their key)."""
    now = time.monotonic()
    cached = _key_cache.get(key_hash)
    if cached is not None and cached[0] > now:
        return cached[1]
    key = ApiKey.objects.active().select_related("user").filter(key_hash=key_hash).first()
    if key is None:
        _key_cache.pop(key_hash, None)
        return None
    if len(_key_cache) >= KEY_CACHE_MAX_ENTRIES:
        _key_cache.clear()
    _key_cache[key_hash] = (now + KEY_CACHE_SECONDS, key)
    return key


def api_key_cache_forget(key_hash: str | None = None) -> None:
    """Drop one cached key (or all), now and again when the current transaction commits
    (a request in between may have re-read the row as it was before)."""

    def forget() -> None:
        if key_hash is None:
            _key_cache.clear()
        else:
            _key_cache.pop(key_hash, None)

    forget()
    transaction.on_commit(forget)


def api_key_cached(*, raw: object) -> ApiKey | None:
    """The key for `raw` when this process's cache holds it fresh and its last_used_at needs
    no write: no I/O, so the event loop may call it. None means "ask api_key_authenticate"
    (it does not mean the key is invalid)."""
    if not _could_be_a_key(raw):
        return None
    cached = _key_cache.get(hash_key(raw))
    if cached is None or cached[0] <= time.monotonic():
        return None
    shared = cached[1]
    if shared.last_used_at is None or timezone.now() - shared.last_used_at > LAST_USED_RESOLUTION:
        return None
    return copy.copy(shared)


def api_key_authenticate(*, raw: object) -> ApiKey | None:
    """The active key for a raw bearer value (None for anything that cannot be one),
    touching last_used_at at most once a minute (per process)."""
    if not _could_be_a_key(raw):
        return None
    shared = _active_key(hash_key(raw))
    if shared is None:
        return None
    now = timezone.now()
    if shared.last_used_at is None or now - shared.last_used_at > LAST_USED_RESOLUTION:
        shared.last_used_at = now
        ApiKey.objects.filter(pk=shared.pk).update(last_used_at=now)
    return copy.copy(shared)
