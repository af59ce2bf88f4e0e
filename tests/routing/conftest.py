import pytest
from asgiref.sync import SyncToAsync
from django.db import connections


@pytest.fixture
def keyword_classifier(settings):
    """Route with the deterministic keyword backend (no model load)."""
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"
    settings.TOKENFLOW_CLASSIFIER_MODEL = ""


@pytest.fixture(scope="session", autouse=True)
def _close_sync_thread_connections(django_db_setup, django_db_blocker):
    """Async tests run their ORM calls in asgiref's single sync thread; close that thread's
    connections before the test database is dropped (PostgreSQL refuses otherwise)."""
    yield
    executor = SyncToAsync.single_thread_executor
    with django_db_blocker.unblock():
        executor.submit(connections.close_all).result(timeout=30)
