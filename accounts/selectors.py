"""Reads for API keys."""

from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey, hash_key

LAST_USED_RESOLUTION = timedelta(minutes=1)
# Issued keys are 46 characters; anything much longer is not worth hashing.
MAX_RAW_KEY_CHARS = 256


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


def api_key_authenticate(*, raw: object) -> ApiKey | None:
    """The active key for a raw bearer value (None for anything that cannot be one),
    touching last_used_at at most once a minute."""
    if not _could_be_a_key(raw):
        return None
    key = ApiKey.objects.active().filter(key_hash=hash_key(raw)).first()
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
