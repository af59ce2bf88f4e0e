"""The per-process API-key cache (accounts.selectors): lookups skip the database while an
entry is fresh, and revocation still takes effect within KEY_CACHE_SECONDS (at once for
changes saved in this process, within the TTL for writes another process made)."""

import asyncio
import time

import pytest
from django.utils import timezone

from accounts import selectors
from accounts.models import ApiKey
from accounts.selectors import api_key_authenticate

pytestmark = pytest.mark.django_db


def models(client, raw: str) -> int:
    return client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code


def test_a_fresh_entry_costs_no_query(api_key, django_assert_num_queries):
    key, raw = api_key
    assert api_key_authenticate(raw=raw).pk == key.pk  # reads and touches last_used_at
    with django_assert_num_queries(0):
        again = api_key_authenticate(raw=raw)
    assert again.pk == key.pk and again.user_id == key.user_id


def test_each_caller_gets_its_own_copy(api_key):
    _, raw = api_key
    first = api_key_authenticate(raw=raw)
    first.budget_spent_seen = 1
    second = api_key_authenticate(raw=raw)
    assert second is not first and not hasattr(second, "budget_spent_seen")


def test_last_used_at_is_written_at_most_once_a_minute(api_key, django_assert_num_queries):
    key, raw = api_key
    api_key_authenticate(raw=raw)
    selectors.api_key_cache_forget()
    with django_assert_num_queries(1):  # the lookup; last_used_at is recent: no write
        api_key_authenticate(raw=raw)
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_revoke_in_this_process_takes_effect_at_once(client, api_key):
    key, raw = api_key
    assert models(client, raw) == 200
    key.revoke()
    assert models(client, raw) == 401


def test_deactivating_the_owner_takes_effect_at_once(client, api_key, django_user_model):
    key, raw = api_key
    owner = django_user_model.objects.create_user("owner")
    key.user = owner
    key.save(update_fields=["user"])
    assert models(client, raw) == 200
    owner.is_active = False
    owner.save()
    assert models(client, raw) == 403


def test_revocation_by_another_process_takes_effect_within_a_second(client, api_key):
    """Another process's write sends no signal here: a queryset update stands in for it."""
    key, raw = api_key
    assert models(client, raw) == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    revoked_at = time.monotonic()
    while True:
        asked_at = time.monotonic()
        if models(client, raw) != 200:
            break
        assert asked_at - revoked_at < 1.0  # the promise, whatever the TTL
        time.sleep(0.02)
    time.sleep(0.05)
    assert models(client, raw) == 401  # and it stays revoked


def test_the_cache_is_used_between_revocations(client, api_key):
    """Without the cache the queryset update would be seen at once: the test above would
    pass vacuously. The entry is fresh right after a request, so the next one still passes."""
    key, raw = api_key
    assert models(client, raw) == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert models(client, raw) == 200


def test_unknown_keys_are_not_cached(api_key):
    selectors.api_key_cache_forget()
    for n in range(50):
        assert api_key_authenticate(raw=f"tf_guess{n}") is None
    assert selectors.keys_cache.entries == {}


@pytest.mark.django_db(transaction=True)
async def test_a_cached_key_is_admitted_on_the_event_loop(async_client, monkeypatch):
    """ASGI requests with a fresh cached key skip the middleware's thread hop (in-process
    rate limits); an unknown key, and a key revoked since, still get their 401 at once."""
    from asgiref.sync import sync_to_async

    from accounts import middleware
    from accounts.ratelimit import rate_limits_in_process

    if not rate_limits_in_process():
        pytest.skip("rate limits in Redis (a network call): admission keeps its thread hop")
    key, raw = await sync_to_async(ApiKey.issue)(name="loop")
    hops = []
    admit = middleware._admit
    monkeypatch.setattr(middleware, "_admit", lambda request: hops.append(1) or admit(request))

    async def status(value: str) -> int:
        response = await async_client.get(
            "/v1/models", headers={"Authorization": f"Bearer {value}"}
        )
        return response.status_code

    assert await status(raw) == 200 and len(hops) == 1  # looked up (and cached) in the thread
    assert await status(raw) == 200 and len(hops) == 1  # admitted on the loop
    assert await status("tf_not-a-key") == 401 and len(hops) == 2
    await sync_to_async(key.revoke)()
    assert await status(raw) == 401


@pytest.mark.django_db(transaction=True)
async def test_the_refresher_keeps_a_key_fresh_and_still_sees_revocations(
    async_client, monkeypatch, settings
):
    """A key used less than once a second stays admitted on the loop (its entry is re-read
    in the background every TOKENFLOW_KEY_REFRESH_SECONDS), and a revocation written by
    another process (no signal here) still takes effect within the second."""
    from asgiref.sync import sync_to_async

    from accounts import middleware
    from accounts.ratelimit import rate_limits_in_process

    if not rate_limits_in_process():
        pytest.skip("rate limits in Redis (a network call): admission keeps its thread hop")
    settings.TOKENFLOW_KEY_REFRESH_SECONDS = 0.2
    key, raw = await sync_to_async(ApiKey.issue)(name="refreshed")
    hops = []
    admit = middleware._admit
    monkeypatch.setattr(middleware, "_admit", lambda request: hops.append(1) or admit(request))

    async def status() -> int:
        response = await async_client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"})
        return response.status_code

    assert await status() == 200 and len(hops) == 1
    await asyncio.sleep(selectors.KEY_CACHE_SECONDS + 0.5)  # the entry alone would be stale
    assert await status() == 200 and len(hops) == 1  # refreshed meanwhile: no thread hop
    await sync_to_async(ApiKey.objects.filter(pk=key.pk).update)(revoked_at=timezone.now())
    revoked_at = time.monotonic()
    while await status() == 200:
        assert time.monotonic() - revoked_at < 1.0
        await asyncio.sleep(0.02)
    assert await status() == 401


def test_a_refresh_that_read_before_a_forget_puts_nothing_back(api_key):
    key, raw = api_key
    selectors.api_key_cache_forget()
    epoch = selectors.keys_cache.epoch
    real = ApiKey.objects.active

    def active():  # a change in this process lands while the refresh query runs
        selectors.api_key_cache_forget()
        return real()

    ApiKey.objects.active = active
    try:
        selectors.keys_cache.refresh([key.key_hash])
    finally:
        ApiKey.objects.active = real
    assert selectors.keys_cache.epoch > epoch and key.key_hash not in selectors.keys_cache.entries
    selectors.keys_cache.refresh([key.key_hash])
    assert key.key_hash in selectors.keys_cache.entries
