"""Reads for API keys."""

import asyncio
import contextvars
import copy
import logging
import time
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
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
# Keys admitted on the event loop stay fresh without the request waiting: a task re-reads
# them from the database every TOKENFLOW_KEY_REFRESH_SECONDS (one query for all of them), so
# an entry is never older than KEY_CACHE_SECONDS yet a key used once every few seconds still
# skips the thread hop. A key unused for KEY_IDLE_SECONDS is no longer refreshed (its next
# request looks it up again). `_key_epoch` moves on every forget: a refresh that read the
# rows before a change in this process does not put the old row back.
KEY_IDLE_SECONDS = 60.0
_key_used: dict[str, float] = {}
_key_epoch = 0
_refresher: asyncio.Task | None = None
logger = logging.getLogger(__name__)


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
        global _key_epoch
        _key_epoch += 1
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
    key_hash = hash_key(raw)
    now = time.monotonic()
    _key_used[key_hash] = now
    _refresher_ensure()
    cached = _key_cache.get(key_hash)
    if cached is None or cached[0] <= now:
        return None
    shared = cached[1]
    if shared.last_used_at is None or timezone.now() - shared.last_used_at > LAST_USED_RESOLUTION:
        return None
    return copy.copy(shared)


def _refresher_ensure() -> None:
    """Start this event loop's refresh task unless it runs (called on the loop)."""
    global _refresher
    if settings.TOKENFLOW_KEY_REFRESH_SECONDS <= 0:
        return
    loop = asyncio.get_running_loop()
    if _refresher is not None and not _refresher.done() and _refresher.get_loop() is loop:
        return
    # Its own context: not the request's (whose thread-sensitive executor ends with it).
    _refresher = loop.create_task(_refresh_loop(), context=contextvars.Context())


async def _refresh_loop() -> None:
    """Re-read the recently used keys until none has been used for KEY_IDLE_SECONDS."""
    while True:
        await asyncio.sleep(settings.TOKENFLOW_KEY_REFRESH_SECONDS)
        idle_before = time.monotonic() - KEY_IDLE_SECONDS
        for key_hash in [h for h, used in _key_used.items() if used < idle_before]:
            _key_used.pop(key_hash, None)
        if not _key_used:
            return
        try:
            await sync_to_async(_keys_refresh, thread_sensitive=False)(list(_key_used))
        except Exception:  # noqa: BLE001 - the database is down: entries simply expire
            logger.warning("API-key cache refresh failed", exc_info=True)


def _keys_refresh(hashes: list[str]) -> None:
    """One query for `hashes`: active keys get a fresh entry, the others leave the cache."""
    epoch, read_at = _key_epoch, time.monotonic()
    keys = {
        key.key_hash: key
        for key in ApiKey.objects.active().select_related("user").filter(key_hash__in=hashes)
    }
    if epoch != _key_epoch:  # forgotten meanwhile: the next request looks it up
        return
    for key_hash in hashes:
        if key_hash in keys:
            _key_cache[key_hash] = (read_at + KEY_CACHE_SECONDS, keys[key_hash])
        else:
            _key_cache.pop(key_hash, None)


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
