"""Bad input: clear 400/413 JSON errors naming the field (no model needed)."""

import pytest

TEXT = "The quick brown fox jumps over the lazy dog. " * 20


def post(client, auth, body, **extra):
    return client.post("/api/compress", body, content_type="application/json", **auth, **extra)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"ratio": 0.5}, 400, "text"),
        ({"text": "", "ratio": 0.5}, 400, "text"),
        ({"text": "   ", "ratio": 0.5}, 400, "text"),
        ({"text": 42, "ratio": 0.5}, 400, "text"),
        ({"text": ["a"], "ratio": 0.5}, 400, "text"),
        ({"text": TEXT}, 400, "ratio"),
        ({"text": TEXT, "ratio": 0.5, "target_tokens": 10}, 400, "ratio"),
        ({"text": TEXT, "ratio": 0}, 400, "ratio"),
        ({"text": TEXT, "ratio": -0.2}, 400, "ratio"),
        ({"text": TEXT, "ratio": 1.5}, 400, "ratio"),
        ({"text": TEXT, "ratio": "0.5"}, 400, "ratio"),
        ({"text": TEXT, "ratio": True}, 400, "ratio"),
        ({"text": TEXT, "target_tokens": 0}, 400, "target_tokens"),
        ({"text": TEXT, "target_tokens": 2.5}, 400, "target_tokens"),
        ({"text": TEXT, "ratio": 0.5, "force_tokens": "ID-1"}, 400, "force_tokens"),
        ({"text": TEXT, "ratio": 0.5, "force_tokens": ["ok", ""]}, 400, "force_tokens"),
        ({"text": TEXT, "ratio": 0.5, "question": 3}, 400, "question"),
        ({"text": TEXT, "ratio": 0.5, "instruction": {}}, 400, "instruction"),
        ({"text": TEXT, "ratio": 0.5, "method": "zip"}, 400, "method"),
        ({"text": TEXT, "ratio": 0.5, "engine": "nope"}, 400, "engine"),
    ],
)
def test_bad_input_names_the_field(client, auth, body, status, field):
    response = post(client, auth, body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"]


@pytest.mark.django_db
def test_text_over_the_limit_is_413(client, auth, settings):
    settings.TOKENFLOW_COMPRESSOR_MAX_CHARS = 1000
    response = post(client, auth, {"text": "word " * 300, "ratio": 0.5})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "text"


@pytest.mark.django_db
def test_malformed_json_and_wrong_method(client, auth):
    response = client.post("/api/compress", "{nope", content_type="application/json", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert client.get("/api/compress", **auth).status_code == 405


@pytest.mark.django_db
def test_requires_an_api_key(client):
    response = client.post("/api/compress", {"text": TEXT, "ratio": 0.5}, "application/json")
    assert response.status_code == 401


@pytest.mark.django_db
def test_compress_options_of_other_endpoints_name_the_nested_field(client, auth):
    body = {"model": "mock/echo", "prompt": "hi", "compress": {"ratio": 2}}
    response = client.post("/api/generate", body, content_type="application/json", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "compress.ratio"
    body["compress"] = {"ratio": 0.5, "target_tokens": 30}
    response = client.post("/api/generate", body, content_type="application/json", **auth)
    assert response.json()["error"]["field"] == "compress.ratio"
