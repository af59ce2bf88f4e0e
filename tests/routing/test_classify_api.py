"""POST /api/classify, reading classifications back, and every bad input (keyword backend)."""

import json

import pytest

from routing.models import CategoryRoute, Classification
from tests.factories import mock_model, route

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keyword_classifier")]


def classify(client, auth, **body):
    return client.post("/api/classify", json.dumps(body), content_type="application/json", **auth)


def test_classify_with_own_categories_is_persisted_and_readable(client, auth):
    response = classify(
        client, auth, prompt="please translate this", possible_categories=["code", "translate"]
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["top_category"] == "translate" and body["engine"] == "keyword"
    assert [s["category"] for s in body["scores"]] == ["translate", "code"]
    assert sum(s["score"] for s in body["scores"]) == pytest.approx(1)
    assert body["confidence"] == pytest.approx(0.9)
    row = Classification.objects.get(pk=body["id"])
    assert row.prompt.text == "please translate this" and row.api_key is not None
    again = client.get(f"/api/classifications/{body['id']}", **auth).json()
    assert again["top_category"] == "translate" and again["prompt"] == "please translate this"


def test_categories_may_carry_descriptions(client, auth):
    body = classify(
        client,
        auth,
        prompt="math please",
        possible_categories=[{"name": "math", "description": "numbers"}, "poetry"],
    ).json()
    assert body["top_category"] == "math"
    assert body["categories"][0] == {"category": "math", "description": "numbers"}


def test_default_categories_come_from_the_routing_table(client, auth):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    route("cooking", model, description="recipes and kitchens")
    route("sports", model, description="games")
    route("hidden", mock_model(), enabled=False)
    body = classify(client, auth, prompt="a cooking question").json()
    assert body["top_category"] == "cooking"
    assert {c["category"] for c in body["categories"]} == {"cooking", "sports"}
    assert body["categories"][0]["description"] in {"recipes and kitchens", "games"}


def test_multi_label_scores_are_independent(client, auth):
    body = classify(
        client,
        auth,
        prompt="code and math",
        possible_categories=["code", "math", "poetry"],
        multi_label=True,
    ).json()
    scores = {s["category"]: s["score"] for s in body["scores"]}
    assert scores == {"code": 0.9, "math": 0.9, "poetry": 0.1} and body["multi_label"]


def test_list_filters_by_top_category_and_keys_see_only_their_own(client, auth):
    classify(client, auth, prompt="code", possible_categories=["code", "math"])
    classify(client, auth, prompt="math", possible_categories=["code", "math"])
    listing = client.get("/api/classifications?top_category=math", **auth).json()
    assert [r["top_category"] for r in listing["results"]] == ["math"]
    from accounts.models import ApiKey

    _, other = ApiKey.issue(name="other")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {other}"}
    assert client.get("/api/classifications", **headers).json()["count"] == 0
    first = Classification.objects.first()
    assert client.get(f"/api/classifications/{first.pk}", **headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "field", "code"),
    [
        ({}, 400, "prompt", "required"),
        ({"prompt": ""}, 400, "prompt", "empty"),
        ({"prompt": "   "}, 400, "prompt", "empty"),
        ({"prompt": 5}, 400, "prompt", "invalid_type"),
        ({"prompt": "x", "possible_categories": ["only"]}, 400, "possible_categories", None),
        ({"prompt": "x", "possible_categories": []}, 400, "possible_categories", None),
        ({"prompt": "x", "possible_categories": "a,b"}, 400, "possible_categories", None),
        ({"prompt": "x", "possible_categories": ["a", "A "]}, 400, "possible_categories", None),
        ({"prompt": "x", "possible_categories": ["a", ""]}, 400, "possible_categories", "empty"),
        ({"prompt": "x", "possible_categories": ["a", 3]}, 400, "possible_categories", None),
        (
            {"prompt": "x", "possible_categories": ["a", {"name": " "}]},
            400,
            "possible_categories",
            None,
        ),
        (
            {"prompt": "x", "possible_categories": ["a", "b" * 101]},
            400,
            "possible_categories",
            None,
        ),
        ({"prompt": "x", "possible_categories": list("abcd")}, 400, "possible_categories", None),
        (
            {"prompt": "x", "possible_categories": ["a", "b"], "multi_label": "yes"},
            400,
            "multi_label",
            None,
        ),
    ],
)
def test_bad_input_is_a_json_error_with_its_field(
    client, auth, settings, body, status, field, code
):
    settings.TOKENFLOW_MAX_CATEGORIES = 3
    response = classify(client, auth, **body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["field"] == field and error["message"]
    if code:
        assert error["code"] == code
    assert not Classification.objects.exists()


def test_error_codes_name_the_problem(client, auth, settings):
    settings.TOKENFLOW_MAX_CATEGORIES = 3
    cases = {
        "too_few_categories": ["a"],
        "duplicate_category": ["a", "a"],
        "too_many_categories": list("abcd"),
    }
    for code, categories in cases.items():
        error = classify(client, auth, prompt="x", possible_categories=categories).json()["error"]
        assert error["code"] == code


def test_too_long_prompt_is_413(client, auth, settings):
    settings.TOKENFLOW_MAX_INPUT_CHARS = 10
    response = classify(client, auth, prompt="x" * 11, possible_categories=["a", "b"])
    assert response.status_code == 413 and response.json()["error"]["field"] == "prompt"


def test_malformed_json_and_no_auth(client, auth):
    response = client.post("/api/classify", "{nope", content_type="application/json", **auth)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert client.post("/api/classify", "{}", content_type="application/json").status_code == 401


def test_empty_routing_table_without_categories_is_503(client, auth):
    CategoryRoute.objects.all().delete()
    response = classify(client, auth, prompt="hello")
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_categories"
