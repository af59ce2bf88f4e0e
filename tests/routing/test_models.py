import pytest
from django.db import IntegrityError, transaction

from routing.models import CategoryRoute, Classification, ModelRanking, Prompt
from tests.factories import mock_model, route

pytestmark = pytest.mark.django_db


def test_seed_has_categories_and_models():
    categories = set(CategoryRoute.objects.values_list("category", flat=True))
    assert {"reasoning", "function-calling", "text-to-text"} <= categories
    assert ModelRanking.objects.get(name="local/smollm2-135m-instruct").enabled
    assert ModelRanking.objects.get(name="mock/echo").enabled
    assert not ModelRanking.objects.get(name="groq/llama-3.3-70b-versatile").enabled


def test_route_category_model_is_unique():
    model = mock_model()
    route("maths", model)
    with pytest.raises(IntegrityError), transaction.atomic():
        route("maths", model, priority=5)


def test_model_name_is_unique():
    mock_model("mock/one")
    with pytest.raises(IntegrityError), transaction.atomic():
        mock_model("mock/one")


def test_context_window_must_be_positive():
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelRanking.objects.create(name="x", provider="mock", upstream_model="x", context_window=0)


def test_confidence_must_be_a_probability():
    with pytest.raises(IntegrityError), transaction.atomic():
        Classification.objects.create(engine="e", top_category="a", confidence=1.5)


def test_prompt_hash_is_computed():
    prompt = Prompt.objects.create(text="hello")
    assert len(prompt.sha256) == 64
