"""Reads for API keys."""

import copy
from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey, hash_key
from tokenflow_site.rowcache import RowCache

LAST_USED_RESOLUTION = timedelta(minutes=1)
# Issued keys are 46 characters; anything much longer is not worth hashing.
MAX_RAW_KEY_CHARS = 256

# Per-process cache of active keys (with their user), keyed by key hash
# (tokenflow_site.rowcache: an entry is at most 1 s old, so a key revoked, its user
# deactivated or its limits changed in any process takes effect everywhere within that
# time; saves in this process drop the entry at once, signals in accounts.apps; keys
# admitted on the event loop are re-read in the background). Unknown and revoked keys are
# never cached: a key issued in another process works at once, and random guesses cannot
# fill the cache.
KEY_CACHE_SECONDS = 1.0


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


def _keys_load(hashes: list[str]) -> dict[str, ApiKey]:
    keys = ApiKey.objects.active().select_related("user").filter(key_hash__in=hashes)
    return {key.key_hash: key for key in keys}


keys_cache: RowCache[str, ApiKey] = RowCache("API-key", _keys_load, seconds=KEY_CACHE_SECONDS)


def api_key_cache_forget(key_hash: str | None = None) -> None:
    """Drop one cached key (or all), now and again when the current transaction commits."""
    keys_cache.forget(key_hash)


def api_key_cached(*, raw: object) -> ApiKey | None:
    """The key for `raw` when this process's cache holds it fresh and its last_used_at needs
    no write: no I/O, so the event loop may call it. None means "ask api_key_authenticate"
    (it does not mean the key is invalid)."""
    if not _could_be_a_key(raw):
        return None
    shared = keys_cache.fresh_on_loop(hash_key(raw))
    if shared is None:
        return None
    if shared.last_used_at is None or timezone.now() - shared.last_used_at > LAST_USED_RESOLUTION:
        return None
    return copy.copy(shared)


def api_key_authenticate(*, raw: object) -> ApiKey | None:
    """The active key for a raw bearer value (None for anything that cannot be one),
    touching last_used_at at most once a minute (per process)."""
    if not _could_be_a_key(raw):
        return None
    shared = keys_cache.read(hash_key(raw))
    if shared is None:
        return None
    now = timezone.now()
    if shared.last_used_at is None or now - shared.last_used_at > LAST_USED_RESOLUTION:
        shared.last_used_at = now
        ApiKey.objects.filter(pk=shared.pk).update(last_used_at=now)
    return copy.copy(shared)
