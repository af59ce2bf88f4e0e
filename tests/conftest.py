"""Shared fixtures. No test touches the network: provider URLs point at a closed port."""

import os

# Fake credentials and a dead base URL: an accidental real provider call fails fast.
for _var in ("GROQ_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY"):
    os.environ.pop(_var, None)
os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
# The tests' mock upstreams listen on loopback (tests of the guard itself turn it off).
os.environ["TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS"] = "1"

import pytest  # noqa: E402
from django.conf import settings as django_settings  # noqa: E402

django_settings.TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS = True  # settings were read before this file

from accounts.models import ApiKey  # noqa: E402
from tests.live import daphne_server, database_url  # noqa: E402


@pytest.fixture(autouse=True)
def _row_caches_empty():
    """Each test starts with empty per-process row caches: a row a previous test cached
    was rolled back with its test's transaction, which sends no signal."""
    from accounts.selectors import keys_cache
    from routing.services.models import models_cache

    keys_cache.entries.clear()
    models_cache.entries.clear()


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


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker, tmp_path_factory) -> str:
    """http://127.0.0.1:<port>; stopped before pytest-django drops the test database."""
    with django_db_blocker.unblock():
        url_of_db = database_url()
    with daphne_server(tmp_path_factory.mktemp("daphne"), url_of_db) as url:
        yield url


@pytest.fixture(scope="session")
def keyword_live_server_url(django_db_setup, django_db_blocker, tmp_path_factory) -> str:
    """A second live server whose classifier is the deterministic keyword backend."""
    with django_db_blocker.unblock():
        url_of_db = database_url()
    env = {"TOKENFLOW_CLASSIFIER": "tests.routing.fake_classifier.KeywordClassifier"}
    with daphne_server(tmp_path_factory.mktemp("daphne-kw"), url_of_db, env) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup, django_db_blocker):
    """On PostgreSQL, end sessions left by async tests' worker threads, the in-process ASGI
    app's sync threads (schema fuzz) and the live server, so pytest-django can drop the test
    database at the end."""
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def pytest_collection_modifyitems(config, items):
    """Browser tests (Playwright's `page`) last: pytest-playwright keeps its sync event loop
    running in the main thread from the first browser test to the end of the session, and
    no async or ORM test should run under it."""
    items.sort(key=lambda item: "page" in getattr(item, "fixturenames", ()))
