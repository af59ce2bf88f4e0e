"""Shared fixtures. No test touches the network: provider URLs point at a closed port."""

import os

# Fake credentials and a dead base URL: an accidental real provider call fails fast.
for _var in ("GROQ_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY"):
    os.environ.pop(_var, None)
os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"

import pytest  # noqa: E402

from accounts.models import ApiKey  # noqa: E402


@pytest.fixture
def api_key(db) -> tuple[ApiKey, str]:
    """(ApiKey row, raw key)."""
    return ApiKey.issue(name="test")


@pytest.fixture
def auth(api_key) -> dict[str, str]:
    """Headers for django.test.Client / AsyncClient."""
    return {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user(
        "staff", password="pw", is_staff=True, is_superuser=True
    )
    client.force_login(user)
    return client


@pytest.fixture(scope="session", autouse=True)
def _close_executor_connections(django_db_setup, django_db_blocker):
    """Async tests reach the DB from asgiref's executor thread; close that connection
    before the test database is dropped (PostgreSQL refuses to drop a database in use)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    with django_db_blocker.unblock():
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


def pytest_collection_modifyitems(config, items):
    """Browser tests (Playwright's `page`) last: pytest-playwright keeps its sync event loop
    running in the main thread from the first browser test to the end of the session, and
    no async or ORM test should run under it."""
    items.sort(key=lambda item: "page" in getattr(item, "fixturenames", ()))
