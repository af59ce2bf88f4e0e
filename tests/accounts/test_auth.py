import pytest
from django.core.management import call_command

from accounts.models import ApiKey, hash_key

pytestmark = pytest.mark.django_db


def test_missing_key_is_401_json(client):
    response = client.get("/api/model-rankings")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_wrong_key_is_401(client):
    response = client.get("/api/model-rankings", HTTP_AUTHORIZATION="Bearer tf_nope")
    assert response.status_code == 401
    assert "Invalid" in response.json()["error"]["message"]


def test_non_bearer_scheme_is_401(client, api_key):
    response = client.get("/api/model-rankings", HTTP_AUTHORIZATION=f"Basic {api_key[1]}")
    assert response.status_code == 401


def test_revoked_key_is_401(client, api_key):
    key, raw = api_key
    key.revoke()
    response = client.get("/api/model-rankings", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 401


def test_valid_key_passes_and_records_last_use(client, api_key):
    key, raw = api_key
    response = client.get("/api/model-rankings", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_v1_routes_are_protected(client):
    assert client.get("/v1/models").status_code == 401


def test_key_is_stored_hashed():
    key, raw = ApiKey.issue(name="x")
    assert raw.startswith("tf_") and key.key_hash == hash_key(raw)
    assert raw not in (key.key_hash, key.prefix) and raw.startswith(key.prefix)


def test_create_api_key_prints_key_last(capsys):
    call_command("create_api_key", "--name", "ci")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiKey.objects.get(key_hash=hash_key(raw)).name == "ci"


def test_healthz_is_public(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_schema_and_docs_are_public(client):
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
