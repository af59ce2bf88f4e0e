"""The HTTP rules of docs/auth.md, one test each (the WebSocket ones: test_ws_auth.py)."""

import pytest
from django.test import Client

from accounts.models import ApiKey
from routing.models import Classification, Prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(django_user_model):
    def make(username: str, **fields):
        return django_user_model.objects.create_user(username, password="pw", **fields)

    return make


def session(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def classification(key: ApiKey | None, text: str) -> Classification:
    prompt = Prompt.objects.create(text=text, api_key=key)
    return Classification.objects.create(
        prompt=prompt,
        api_key=key,
        engine="test",
        categories=["a"],
        scores=[{"label": "a", "score": 1.0}],
        top_category="a",
        confidence=1.0,
    )


@pytest.mark.parametrize("header", ["HTTP_X_API_KEY", "HTTP_API_KEY"])
def test_key_in_x_api_key_and_api_key_headers(client, api_key, header):
    assert client.get("/api/generations", **{header: api_key[1]}).status_code == 200
    assert client.get("/api/generations", **{header: "tf_wrong"}).status_code == 401


def test_a_key_sees_only_its_own_records_and_foreign_ids_are_404(client):
    key_a, raw_a = ApiKey.issue(name="a")
    key_b, _raw_b = ApiKey.issue(name="b")
    own, foreign = classification(key_a, "mine"), classification(key_b, "secret of b")
    response = client.get("/api/classifications", HTTP_AUTHORIZATION=f"Bearer {raw_a}")
    assert [row["id"] for row in response.json()["results"]] == [own.pk]
    missing = client.get("/api/classifications/999999", HTTP_AUTHORIZATION=f"Bearer {raw_a}")
    other = client.get(f"/api/classifications/{foreign.pk}", HTTP_AUTHORIZATION=f"Bearer {raw_a}")
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"


def test_non_staff_session_is_403(user):
    response = session(user("plain")).get("/api/classifications")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_staff_session_sees_everything(user):
    classification(ApiKey.issue(name="a")[0], "a"), classification(None, "b")
    response = session(user("boss", is_staff=True)).get("/api/classifications")
    assert response.status_code == 200 and response.json()["count"] == 2


def test_staff_session_post_needs_the_csrf_token(user):
    client = session(user("boss", is_staff=True))
    response = client.post("/api/generate", {}, content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed"
    client.get("/admin/")  # a page with a form sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/api/generate", {}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    # Past authorization: now it is the body that is wrong.
    assert response.status_code == 400 and response.json()["error"]["field"] == "model"


def test_api_key_post_needs_no_csrf_token(api_key):
    response = Client(enforce_csrf_checks=True).post(
        "/api/generate", {}, content_type="application/json", HTTP_X_API_KEY=api_key[1]
    )
    assert response.status_code == 400


def test_inactive_user_session_and_key_are_403(user):
    gone = user("gone", is_staff=True)
    client = session(gone)
    _key, raw = ApiKey.issue(name="of gone", user=gone)
    gone.is_active = False
    gone.save(update_fields=["is_active"])
    assert client.get("/api/classifications").status_code == 403
    response = Client().get("/api/classifications", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_a_key_wins_over_a_staff_cookie(user):
    """A request with both acts as the key: its own records only, no staff view."""
    key, raw = ApiKey.issue(name="a")
    classification(key, "mine"), classification(None, "not mine")
    client = session(user("boss", is_staff=True))
    response = client.get("/api/classifications", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.json()["count"] == 1


def test_public_routes(client):
    for path in ("/healthz", "/metrics", "/api/schema/", "/api/docs/", "/api/redoc/"):
        assert client.get(path).status_code == 200, path


def test_private_metrics_follow_the_api_rules(client, settings, user, api_key):
    settings.TOKENFLOW_METRICS_PUBLIC = False
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer tf_wrong").status_code == 401
    assert client.get("/metrics", HTTP_X_API_KEY=api_key[1]).status_code == 200
    assert client.get("/metrics", HTTP_API_KEY=api_key[1]).status_code == 200
    assert session(user("plain")).get("/metrics").status_code == 403
    assert session(user("boss", is_staff=True)).get("/metrics").status_code == 200
