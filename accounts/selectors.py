"""Reads for API keys."""

from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey, hash_key

LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The active key for a raw bearer value, touching last_used_at at most once a minute."""
    key = ApiKey.objects.active().filter(key_hash=hash_key(raw)).first()
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
