"""The HTTP front door: one authentication and permission layer on every route, JSON bodies
without a JSON Content-Type, bounded pagination (issue 10)."""

import pytest
from django.test import Client

from accounts.models import ApiKey
from compression.models import Compression
from routing.models import Classification, Generation, Prompt
from tests.factories import mock_model

pytestmark = pytest.mark.django_db

JSON = "application/json"


@pytest.fixture(autouse=True)
def keyword_classifier(settings):
    """No real model here: a category wins when its label is in the prompt."""
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"


def _records(key: ApiKey) -> dict[str, int]:
    """One record of each kind owned by `key`: {list route: id}."""
    prompt = Prompt.objects.create(text="hi", messages=[], api_key=key)
    model = mock_model()
    generation = Generation.objects.create(
        prompt=prompt, api_key=key, model=model, model_name=model.name, provider="mock"
    )
    classification = Classification.objects.create(
        prompt=prompt, api_key=key, top_category="a", confidence=1, scores=[], categories=[]
    )
    compression = Compression.objects.create(
        api_key=key,
        original_text="a",
        compressed_text="a",
        original_tokens=1,
        compressed_tokens=1,
        ratio=1,
        engine="fast",
        model_name="m",
        duration_ms=1,
    )
    return {
        "/api/generations": generation.pk,
        "/api/classifications": classification.pk,
        "/api/compressions": compression.pk,
    }


@pytest.mark.parametrize("header", ["HTTP_X_API_KEY", "HTTP_API_KEY"])
def test_openai_and_azure_style_key_headers(client, api_key, header):
    assert client.get("/api/model-rankings", **{header: api_key[1]}).status_code == 200
    assert client.get("/api/model-rankings", **{header: "tf_wrong"}).status_code == 401


def test_a_key_sees_only_its_own_records_and_foreign_ids_are_404(client, api_key):
    mine = _records(api_key[0])
    other_key, other_raw = ApiKey.issue(name="other")
    theirs = _records(other_key)
    for route, pk in mine.items():
        listing = client.get(route, HTTP_AUTHORIZATION=f"Bearer {api_key[1]}").json()
        assert [row["id"] for row in listing["results"]] == [pk], route
        own = client.get(f"{route}/{pk}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
        assert own.status_code == 200
        foreign = client.get(f"{route}/{theirs[route]}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
        missing = client.get(f"{route}/999999", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"


def test_staff_session_sees_every_key_s_records(staff_client, api_key):
    _records(api_key[0])
    _records(ApiKey.issue(name="other")[0])
    for route in ("/api/generations", "/api/classifications", "/api/compressions"):
        assert staff_client.get(route).json()["count"] == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/generations"),
        ("get", "/api/classifications"),
        ("get", "/api/compressions"),
        ("get", "/api/model-rankings"),
        ("post", "/api/classify"),
        ("post", "/api/generate"),
        ("post", "/api/compress"),
        ("post", "/api/models/select"),
        ("post", "/api/process"),
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
    ],
)
def test_a_non_staff_session_is_403_everywhere(client, django_user_model, method, path):
    user = django_user_model.objects.create_user("plain", password="pw")
    client.force_login(user)
    response = getattr(client, method)(path, {}, content_type=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_an_inactive_user_s_session_and_key_are_403(client, django_user_model):
    user = django_user_model.objects.create_user("gone", password="pw", is_staff=True)
    _key, raw = ApiKey.issue(name="of-gone", user=user)
    client.force_login(user)
    user.is_active = False
    user.save()
    assert client.get("/api/generations").status_code == 403
    response = Client().get("/api/generations", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/classify", {"prompt": "hi", "possible_categories": ["a", "b"]}),
        ("/api/generate", {"model": "mock/csrf", "prompt": "hi"}),
        ("/v1/chat/completions", {"model": "mock/csrf", "messages": []}),
        ("/api/compress", {"text": "hi", "ratio": 0.5}),
    ],
)
def test_a_staff_session_needs_the_csrf_token_on_post(django_user_model, path, body):
    django_user_model.objects.create_user("boss", password="pw", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.login(username="boss", password="pw")
    denied = client.post(path, body, content_type=JSON)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "csrf_failed"
    client.get("/admin/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    allowed = client.post(path, body, content_type=JSON, HTTP_X_CSRFTOKEN=token)
    assert allowed.status_code != 403, allowed.content


def test_api_keys_need_no_csrf_token(api_key):
    client = Client(enforce_csrf_checks=True)
    body = {"prompt": "translate this", "possible_categories": ["translate", "code"]}
    response = client.post("/api/classify", body, content_type=JSON, HTTP_X_API_KEY=api_key[1])
    assert response.status_code == 201


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", ""])
def test_a_json_body_is_json_whatever_its_content_type(client, auth, content_type):
    body = '{"prompt": "translate this", "possible_categories": ["translate", "code"]}'
    response = client.generic("POST", "/api/classify", body, content_type, **auth)
    assert response.status_code == 201, response.content
    assert response.json()["top_category"] == "translate"


@pytest.mark.parametrize(
    "query", ["limit=100000", "limit=-1", "offset=-5", "limit=abc", "offset=1e3"]
)
def test_pagination_rejects_bad_limits_and_offsets(client, auth, query):
    response = client.get(f"/api/generations?{query}", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["field"] in {"limit", "offset"}


def test_nan_and_infinity_are_malformed_json(client, auth):
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"model": "x", "prompt": "hi", "temperature": {literal}}}'
        response = client.post("/api/generate", body, content_type=JSON, **auth)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"


def test_strings_are_not_numbers_and_nul_is_refused(client, auth):
    mock_model("mock/strict")
    cases = [
        ({"model": "mock/strict", "prompt": "hi", "temperature": "0.5"}, "temperature"),
        ({"model": "mock/strict", "prompt": "hi", "max_tokens": 5.5}, "max_tokens"),
        ({"model": "mock/strict", "prompt": "hi", "max_tokens": True}, "max_tokens"),
        ({"model": 12, "prompt": "hi"}, "model"),
        ({"model": "mock/strict", "prompt": "a\x00b"}, "prompt"),
        ({"model": "mock/strict", "messages": [{"role": "user", "content": "\x00"}]}, "messages"),
    ]
    for body, field in cases:
        response = client.post("/api/generate", body, content_type=JSON, **auth)
        assert response.status_code == 400, body
        assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "path",
    [
        "/api/generations?limt=5",
        "/api/classifications?top=coding",
        "/api/compressions?engin=fast",
        "/api/model-rankings?enabld=true",
        "/api/batches?x=1",
        "/api/generations/1?verbose=1",
    ],
)
def test_unknown_query_parameters_are_refused_not_ignored(client, auth, path):
    response = client.get(path, **auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_parameter"


def test_known_query_parameters_still_work(client, auth):
    assert (
        client.get("/api/generations?limit=5&offset=0&status=completed", **auth).status_code == 200
    )
    assert client.get("/api/model-rankings?enabled=true&format=json", **auth).status_code == 200
