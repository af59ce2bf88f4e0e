"""Routing fixtures (the live daphne servers are in tests/conftest.py, tests/live.py)."""

import pytest


@pytest.fixture
def keyword_classifier(settings):
    """Route with the deterministic keyword backend (no model load)."""
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"
    settings.TOKENFLOW_CLASSIFIER_MODEL = ""
