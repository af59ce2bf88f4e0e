"""db_retry and the generation stream when the database stays unreachable (in-process)."""

from contextlib import aclosing

import pytest
from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError

from routing.models import Generation
from routing.services import generation as generation_module
from routing.services.generation import GenerationParams, generation_prepare, generation_run
from tests.factories import mock_model
from tokenflow_site.db import db_retry

pytestmark = pytest.mark.django_db(transaction=True)


class Flaky:
    """Raises `error` for the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: type[Exception] = OperationalError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("connection refused")
        return "ok"


async def test_db_retry_waits_for_the_database(settings):
    settings.TOKENFLOW_DB_RETRY_SECONDS = 5
    flaky = Flaky(3, InterfaceError)
    assert await db_retry(flaky) == "ok"
    assert flaky.calls == 4


async def test_db_retry_gives_up_after_its_budget(settings):
    settings.TOKENFLOW_DB_RETRY_SECONDS = 0.5
    flaky = Flaky(10**6)
    with pytest.raises(OperationalError):
        await db_retry(flaky)
    assert 2 <= flaky.calls <= 4  # 0.2 s, then 0.4 s: the budget is spent


async def test_db_retry_does_not_retry_other_errors(settings):
    flaky = Flaky(1, ValueError)
    with pytest.raises(ValueError):
        await db_retry(flaky)
    assert flaky.calls == 1


async def test_stream_ends_with_database_unavailable_when_the_write_never_lands(
    settings, monkeypatch
):
    settings.TOKENFLOW_DB_RETRY_SECONDS = 0.3
    model = await sync_to_async(mock_model)(response="a b c")
    generation = await sync_to_async(generation_prepare)(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        params=GenerationParams(),
        api_key=None,
        transport="test",
    )

    def broken_finish(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(generation_module, "_finish", broken_finish)
    async with aclosing(generation_run(generation)) as events:
        seen = [event async for event in events]
    assert [e.type for e in seen] == ["metadata", "text", "text", "text", "error"]
    assert seen[-1].data["code"] == "database_unavailable" and seen[-1].data["status"] == 503
    row = await Generation.objects.aget(pk=generation.pk)
    assert row.status in ("queued", "streaming")  # left for the sweeper


def test_unreachable_database_is_a_json_503_at_the_front_door(client, monkeypatch):
    from accounts import middleware

    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(middleware, "api_key_authenticate", down)
    response = client.post(
        "/api/generate",
        {"prompt": "x"},
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer tf_anything",
    )
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "database_unavailable"


def test_unreachable_database_is_a_json_503_in_a_view(client, monkeypatch):
    from tokenflow_site import urls

    class DeadConnection:
        def cursor(self):
            raise InterfaceError("connection already closed")

    monkeypatch.setattr(urls, "connection", DeadConnection())
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
