"""Example utterances, feedback, admin corrections and imports (keyword backend, no model)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import ApiKey
from routing.classifiers.cache import routes_version
from routing.models import CategoryExample, CategoryRoute, Classification
from routing.services.feedback import feedback_report
from routing.services.routes import routing_categories
from tests.factories import mock_model, route

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keyword_classifier")]


def post(client, url, body, auth):
    return client.post(url, json.dumps(body), content_type="application/json", **auth)


def classify(client, auth, **body):
    return post(client, "/api/classify", body, auth)


def error(response, status):
    assert response.status_code == status, response.content
    return response.json()["error"]


def test_categories_may_carry_examples(client, auth):
    response = classify(
        client,
        auth,
        prompt="math please",
        possible_categories=[
            {"name": "math", "description": "numbers", "examples": ["2+2?", "solve x"]},
            {"name": "poetry", "examples": ["a haiku"]},
        ],
    )
    body = response.json()
    assert response.status_code == 201 and body["top_category"] == "math"
    assert body["categories"][0] == {"category": "math", "description": "numbers", "examples": 2}


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        (["fine", "  "], "examples[1] must be a non-empty string"),
        (["same text", "Same   TEXT"], "examples[1] repeats an earlier example"),
        ("not a list", "examples must be a list"),
        ([1], "examples[0] must be a non-empty string"),
        (["x" * 1001], "at most 1000 characters"),
        ([f"example {i}" for i in range(4)], "has 4 examples; the limit is 3"),
    ],
)
def test_bad_examples_are_400_with_the_field(client, auth, settings, examples, message):
    settings.TOKENFLOW_MAX_EXAMPLES = 3
    response = classify(
        client,
        auth,
        prompt="hello",
        possible_categories=[{"name": "a", "examples": examples}, "b"],
    )
    body = error(response, 400)
    assert body["field"] == "possible_categories" and message in body["message"]
    assert not Classification.objects.exists()


@pytest.fixture
def table(db):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    route("cooking", model, description="recipes")
    route("sports", model, description="games")
    return model


def test_feedback_makes_an_example_and_is_reported(client, auth, table):
    first = classify(client, auth, prompt="Who won the cooking final?").json()
    assert first["top_category"] == "cooking"
    version = routes_version()
    response = post(
        client, f"/api/classifications/{first['id']}/feedback", {"category": "Sports"}, auth
    )
    assert response.status_code == 200, response.content
    assert response.json()["feedback_category"] == "sports"
    example = CategoryExample.objects.get()
    assert (example.category, example.text, example.source) == (
        "sports",
        "Who won the cooking final?",
        "correction",
    )
    assert routes_version() != version  # every process reloads its routing table
    assert {c.label: c.examples for c in routing_categories()}["sports"] == (
        "Who won the cooking final?",
    )
    # Changing one's mind replaces the example; the same prompt again adds no duplicate.
    post(client, f"/api/classifications/{first['id']}/feedback", {"category": "cooking"}, auth)
    assert list(CategoryExample.objects.values_list("category", flat=True)) == ["cooking"]
    second = classify(client, auth, prompt="who won the  COOKING final?").json()
    post(client, f"/api/classifications/{second['id']}/feedback", {"category": "cooking"}, auth)
    assert CategoryExample.objects.count() == 1
    report = feedback_report()
    assert (report.corrections, report.examples, report.window, report.correct) == (2, 1, 2, 2)
    assert "accuracy of the last 2 corrected classifications: 100.0%" in str(report)


def test_bad_feedback_is_400_or_404_and_saves_nothing(client, auth, table):
    first = classify(client, auth, prompt="a cooking question").json()
    url = f"/api/classifications/{first['id']}/feedback"
    body = error(post(client, url, {"category": "weather"}, auth), 400)
    assert body["field"] == "category" and "not one of this classification" in body["message"]
    assert error(post(client, url, {"category": ""}, auth), 400)["field"] == "category"
    assert error(post(client, url, {"category": 3}, auth), 400)["field"] == "category"
    assert error(post(client, url, {}, auth), 400)["field"] == "category"
    _, other = ApiKey.issue(name="other")
    foreign = {"HTTP_AUTHORIZATION": f"Bearer {other}"}
    assert error(post(client, url, {"category": "sports"}, foreign), 404)["code"] == "not_found"
    assert error(post(client, "/api/classifications/999999/feedback", {}, auth), 404)
    assert not CategoryExample.objects.exists()
    assert Classification.objects.get(pk=first["id"]).feedback_category == ""


def test_bare_labels_take_the_table_description_and_examples(client, auth, table):
    CategoryExample.objects.create(category="sports", text="who scored the goal")
    categories = routing_categories()
    from routing.classifiers.base import Category
    from routing.services.routes import routing_table

    expanded = routing_table().expand([Category("Sports"), Category("sports2", "given")])
    assert expanded[0].description == "games" and expanded[0].examples == ("who scored the goal",)
    assert expanded[1].description == "given" and not expanded[1].examples
    assert {c.label for c in categories} == {"cooking", "sports"}


def test_admin_inline_import_and_corrections(staff_client, auth, client, table):
    sports = CategoryRoute.objects.get(category="sports")
    page = staff_client.get(f"/admin/routing/categoryroute/{sports.pk}/change/")
    assert page.status_code == 200 and b"example utterance" in page.content.lower()
    form = {
        "category": "sports",
        "description": "games",
        "model": table.pk,
        "priority": 100,
        "enabled": "on",
        "examples-TOTAL_FORMS": "2",
        "examples-INITIAL_FORMS": "0",
        "examples-0-text": "Who won the match?",
        "examples-0-source": "staff",
        "examples-1-text": "who won the   match?",
        "examples-1-source": "staff",
    }
    url = f"/admin/routing/categoryroute/{sports.pk}/change/"
    response = staff_client.post(url, form)
    assert response.status_code == 200 and b"already has this example" in response.content
    form["examples-TOTAL_FORMS"] = "1"
    assert staff_client.post(url, form).status_code == 302
    example = CategoryExample.objects.get()
    assert example.category == "sports" and example.created_by.username == "staff"

    # Bulk import: one bad line imports nothing; a good file skips duplicates.
    bad = b'{"category": "sports", "text": "A"}\n{"category": "sports", "text": ""}\n'
    importer = "/admin/routing/categoryexample/import/"
    response = staff_client.post(importer, {"file": SimpleUploadedFile("x.jsonl", bad)})
    assert response.status_code == 200 and b"line 2" in response.content
    assert CategoryExample.objects.count() == 1
    good = b"category,text\nsports,Who won the match?\ncooking,How long to boil an egg?\n"
    response = staff_client.post(importer, {"file": SimpleUploadedFile("x.csv", good)})
    assert response.status_code == 302
    assert CategoryExample.objects.filter(source="import").count() == 1

    # Staff corrections: the list action and the change form.
    ids = [classify(client, auth, prompt=f"cooking {i}").json()["id"] for i in range(2)]
    response = staff_client.post(
        "/admin/routing/classification/",
        {"action": "correct", "_selected_action": ids, "apply": "1", "category": "sports"},
    )
    assert response.status_code == 302
    assert set(Classification.objects.values_list("feedback_category", flat=True)) == {"sports"}
    third = classify(client, auth, prompt="cooking 3").json()["id"]
    response = staff_client.post(
        f"/admin/routing/classification/{third}/change/", {"feedback_category": "sports"}
    )
    assert response.status_code == 302
    row = Classification.objects.get(pk=third)
    assert (row.feedback_category, row.feedback_source) == ("sports", "staff")
    assert CategoryExample.objects.filter(source="correction").count() == 3
    page = staff_client.get("/admin/routing/classification/")
    assert b"3 corrections" in page.content
