"""route_select: priorities, disabled rows, the default model, and admin edits taking effect."""

import json

import pytest

from routing.models import CategoryRoute, ModelRanking
from routing.services.routes import route_select
from tests.factories import mock_model, route
from tokenflow_site.errors import ApiError

pytestmark = pytest.mark.django_db


@pytest.fixture
def default_model(settings):
    model = mock_model("mock/default", rank=500)
    settings.TOKENFLOW_DEFAULT_MODEL = model.name
    return model


def names(selected):
    model, fallbacks, _info = selected
    return [model.name, *(m.name for m in fallbacks)]


def test_highest_priority_wins_lower_ones_then_default_are_fallbacks(default_model):
    low, high, mid = mock_model("mock/low"), mock_model("mock/high"), mock_model("mock/mid")
    route("maths", low, priority=10)
    route("maths", high, priority=90)
    route("maths", mid, priority=50)
    selected = route_select("maths")
    assert names(selected) == ["mock/high", "mock/mid", "mock/low", "mock/default"]
    info = selected[2]
    assert info.routed and info.candidates == names(selected) and not info.reason


def test_disabled_routes_and_disabled_models_are_skipped(default_model):
    route("maths", mock_model("mock/off", enabled=False), priority=90)
    route("maths", mock_model("mock/route-off"), priority=80, enabled=False)
    route("maths", mock_model("mock/on"), priority=10)
    assert names(route_select("maths")) == ["mock/on", "mock/default"]


def test_default_model_is_not_listed_twice(default_model):
    route("maths", default_model, priority=5)
    assert names(route_select("maths")) == ["mock/default"]


def test_category_without_route_uses_the_default_and_says_so(default_model):
    model, fallbacks, info = route_select("astronomy")
    assert model == default_model and fallbacks == []
    assert not info.routed and info.as_dict()["default_used"]
    assert "astronomy" in info.reason and "no route" in info.reason


def test_disabled_default_falls_back_to_best_ranked_enabled_model(settings):
    settings.TOKENFLOW_DEFAULT_MODEL = "mock/missing"
    ModelRanking.objects.update(enabled=False)
    best = mock_model("mock/best", rank=1)
    mock_model("mock/worse", rank=2)
    model, _fallbacks, info = route_select("anything")
    assert model == best and not info.routed


def test_no_enabled_model_is_503():
    ModelRanking.objects.update(enabled=False)
    with pytest.raises(ApiError) as caught:
        route_select("maths")
    assert caught.value.status == 503 and caught.value.code == "no_model_available"
    assert "enable" in caught.value.message.lower()


def test_admin_edit_of_a_route_changes_the_next_choice(staff_client, default_model):
    first, second = mock_model("mock/first"), mock_model("mock/second")
    route("maths", first, priority=90)
    demoted = route("maths", second, priority=50)
    assert route_select("maths")[0] == first
    response = staff_client.post(
        f"/admin/routing/categoryroute/{demoted.pk}/change/",
        {
            "category": "maths",
            "description": "sums",
            "model": second.pk,
            "priority": 99,
            "enabled": "on",
            "examples-TOTAL_FORMS": "0",  # the example-utterance inline
            "examples-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    assert CategoryRoute.objects.get(pk=demoted.pk).priority == 99
    assert names(route_select("maths"))[:2] == ["mock/second", "mock/first"]


def test_model_rankings_lists_the_categories_each_model_serves(client, auth):
    model = mock_model("mock/ranked", rank=3)
    route("maths", model, priority=7)
    route("poetry", model, enabled=False)
    rows = client.get("/api/model-rankings", **auth).json()
    row = next(r for r in rows if r["name"] == "mock/ranked")
    assert row["categories"] == [{"category": "maths", "priority": 7}]
    assert row["rank"] == 3 and row["provider"] == "mock" and row["enabled"] is True
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    assert json.dumps(rows)
