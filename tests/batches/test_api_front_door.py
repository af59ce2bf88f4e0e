"""The batch API behind the one front door: who may do what, strict input, the schema."""

import io
import json

import pytest
from django.test import Client
from django.utils.crypto import get_random_string

from accounts.models import ApiKey
from batches.models import BatchJob
from tests.factories import mock_model

pytestmark = pytest.mark.django_db


def item(custom_id: str, content: str = "hello") -> dict:
    return {"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": content}]}}


PAYLOAD = {"model": "mock/batch", "items": [item("a"), item("b")]}


@pytest.fixture
def model(db):
    return mock_model("mock/batch")


def key_auth(name: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiKey.issue(name=name)[1]}"}


def create(client, auth, **payload) -> dict:
    response = client.post(
        "/api/batches", payload or PAYLOAD, content_type="application/json", **auth
    )
    assert response.status_code == 201, response.content
    return response.json()


def error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


# --- JSON whatever the Content-Type --------------------------------------------------------


@pytest.mark.parametrize("content_type", ["", "application/x-www-form-urlencoded", "text/plain"])
def test_create_with_a_json_body_without_json_content_type(client, auth, model, content_type):
    response = client.generic(
        "POST", "/api/batches", json.dumps(PAYLOAD), content_type=content_type, **auth
    )
    assert response.status_code == 201, response.content
    assert response.json()["total_items"] == 2
    assert BatchJob.objects.get().items.count() == 2


def test_malformed_json_body_is_a_400(client, auth, model):
    response = client.generic("POST", "/api/batches", "{nope", content_type="", **auth)
    assert error(response, 400)["code"] == "invalid_json"


# --- ownership: another key's job is a missing job -----------------------------------------


ROUTES = [
    ("get", ""),
    ("get", "/results"),
    ("get", "/items"),
    ("post", "/pause"),
    ("post", "/resume"),
    ("post", "/cancel"),
]


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
def test_another_keys_job_is_the_same_404_as_a_missing_one(client, auth, model, method, suffix):
    job_id = create(client, auth)["id"]
    other = key_auth("other")
    send = getattr(client, method)
    foreign = error(send(f"/api/batches/{job_id}{suffix}", **other), 404)
    missing = error(send(f"/api/batches/{job_id + 1000}{suffix}", **other), 404)
    assert foreign["code"] == missing["code"] == "not_found"
    assert foreign["message"].replace(str(job_id), "N") == missing["message"].replace(
        str(job_id + 1000), "N"
    )
    assert BatchJob.objects.get(pk=job_id).status == "pending"  # nothing happened to it
    assert send(f"/api/batches/{job_id}{suffix}", **auth).status_code in (200, 409)


def test_a_key_lists_only_its_own_jobs(client, auth, model):
    mine = create(client, auth)["id"]
    other = key_auth("other")
    theirs = create(client, other)["id"]
    assert [j["id"] for j in client.get("/api/batches", **auth).json()["data"]] == [mine]
    assert [j["id"] for j in client.get("/api/batches", **other).json()["data"]] == [theirs]


def test_staff_session_sees_every_job(auth, model, django_user_model):
    key_client = Client()
    job_id = create(key_client, auth)["id"]
    staff = django_user_model.objects.create_user("boss", password="pw", is_staff=True)
    session = Client()
    session.force_login(staff)
    assert [j["id"] for j in session.get("/api/batches").json()["data"]] == [job_id]
    assert session.get(f"/api/batches/{job_id}/items").json()["total"] == 2


# --- sessions --------------------------------------------------------------------------------


def test_a_non_staff_session_is_403(model, django_user_model):
    user = django_user_model.objects.create_user("someone", password="pw")
    session = Client()
    session.force_login(user)
    assert error(session.get("/api/batches"), 403)["code"] == "forbidden"
    response = session.post("/api/batches", PAYLOAD, content_type="application/json")
    assert error(response, 403)["code"] == "forbidden"
    assert BatchJob.objects.count() == 0


def test_staff_session_post_needs_the_csrf_token(model, django_user_model, settings):
    staff = django_user_model.objects.create_user("boss", password="pw", is_staff=True)
    session = Client(enforce_csrf_checks=True)
    session.force_login(staff)
    response = session.post("/api/batches", PAYLOAD, content_type="application/json")
    assert error(response, 403)["code"] == "csrf_failed"
    assert BatchJob.objects.count() == 0

    token = get_random_string(32)
    session.cookies[settings.CSRF_COOKIE_NAME] = token
    response = session.post(
        "/api/batches", PAYLOAD, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    assert error(session.post(f"/api/batches/{job_id}/cancel"), 403)["code"] == "csrf_failed"
    response = session.post(f"/api/batches/{job_id}/cancel", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_staff_sessions_get_the_same_handler_allowlist(staff_client, model, settings):
    payload = {**PAYLOAD, "handler": "tests.batches.policies.give_up_on_429"}
    response = staff_client.post("/api/batches", payload, content_type="application/json")
    assert error(response, 403)["field"] == "handler"
    settings.TOKENFLOW_BATCH_HANDLERS = ["tests.batches.policies.give_up_on_429"]
    response = staff_client.post("/api/batches", payload, content_type="application/json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("transport", ["jsonl", "multipart"])
def test_handler_allowlist_applies_to_every_transport(client, auth, model, transport):
    handler = "tests.batches.policies.give_up_on_429"
    body = jsonl_body()
    if transport == "jsonl":
        response = client.post(
            f"/api/batches?handler={handler}", body, content_type="application/jsonl", **auth
        )
    else:
        upload = io.BytesIO(body.encode())
        upload.name = "in.jsonl"
        response = client.post("/api/batches", {"file": upload, "handler": handler}, **auth)
    assert error(response, 403)["field"] == "handler"


# --- strict input ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/batches", "/api/batches/{job}/items"])
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
    ],
)
def test_pagination_is_bounded(client, auth, model, path, query, field):
    job_id = create(client, auth)["id"]
    response = client.get(f"{path.format(job=job_id)}?{query}", **auth)
    assert error(response, 400)["field"] == field


def test_pages(client, auth, model):
    job_id = create(client, auth, model="mock/batch", items=[item(str(i)) for i in range(5)])["id"]
    page = client.get(f"/api/batches/{job_id}/items?limit=2&offset=3", **auth).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 3)
    assert [i["custom_id"] for i in page["data"]] == ["3", "4"]
    listing = client.get("/api/batches?limit=1", **auth).json()
    assert (
        listing["object"] == "list"
        and listing["total"] == 1
        and "statistics" not in listing["data"][0]
    )


@pytest.mark.parametrize(
    ("where", "body", "status", "code", "field"),
    [
        ("query", None, 400, "invalid_choice", "mode"),
        ("body", {"mode": "later"}, 400, "invalid_choice", "mode"),
        ("body", {"mode": 1}, 400, "invalid_choice", "mode"),
        ("body", {"mode": "hard"}, 200, None, None),
    ],
)
def test_pause_mode_is_validated_by_name(client, auth, model, where, body, status, code, field):
    job_id = create(client, auth)["id"]
    if where == "query":
        response = client.post(f"/api/batches/{job_id}/pause?mode=later", **auth)
    else:  # a JSON body, no Content-Type
        response = client.generic(
            "POST", f"/api/batches/{job_id}/pause", json.dumps(body), content_type="", **auth
        )
    assert response.status_code == status, response.content
    if code:
        assert response.json()["error"] == {
            "code": code,
            "message": response.json()["error"]["message"],
            "field": field,
        }
    else:
        assert response.json()["status"] == "paused"


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"concurrency": "4"}, "invalid_type", "concurrency"),
        ({"concurrency": 10**6}, "out_of_range", "concurrency"),
        ({"max_attempts": True}, "invalid_type", "max_attempts"),
        ({"name": 5}, "invalid_type", "name"),
        ({"name": "x" * 201}, "too_long", "name"),
        ({"parameters": []}, "invalid_type", "parameters"),
        ({"retry_policy": {"backoff_base": -1}}, "out_of_range", "retry_policy.backoff_base"),
        (
            {"retry_policy": {"retry_statuses": ["429"]}},
            "invalid_type",
            "retry_policy.retry_statuses",
        ),
        ({"retry_policy": {"sleep": 1}}, "unknown_field", "retry_policy"),
        ({"items": [item("a")] * 0}, "empty", "items"),
    ],
)
def test_json_options_are_strict(client, auth, model, payload, code, field):
    response = client.post(
        "/api/batches", {**PAYLOAD, **payload}, content_type="application/json", **auth
    )
    assert error(response, 400)["code"] == code
    assert response.json()["error"]["field"] == field
    assert BatchJob.objects.count() == 0


def test_nulls_mean_the_defaults(client, auth, model, settings):
    data = create(client, auth, **PAYLOAD, name=None, concurrency=None, retry_policy=None)
    assert data["concurrency"] == settings.TOKENFLOW_BATCH_DEFAULT_CONCURRENCY


def jsonl_body() -> str:
    rows = [{**i, "body": {**i["body"], "model": "mock/batch"}} for i in PAYLOAD["items"]]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_jsonl_query_options_are_decoded_and_validated(client, auth, model):
    policy = json.dumps({"retry_statuses": [429], "timeout": 5})
    response = client.post(
        "/api/batches",
        jsonl_body(),
        content_type="application/x-ndjson",
        QUERY_STRING=f"concurrency=3&retry_policy={policy}",
        **auth,
    )
    assert response.status_code == 201, response.content
    assert response.json()["concurrency"] == 3
    assert response.json()["retry_policy"] == {"retry_statuses": [429], "timeout": 5.0}
    for query, code, field in [
        ("concurrency=0", "out_of_range", "concurrency"),
        ("concurrency=many", "invalid_type", "concurrency"),
        ("retry_policy={oops", "invalid_json", "retry_policy"),
        ("parameters=[1]", "invalid_type", "parameters"),
    ]:
        response = client.post(
            f"/api/batches?{query}", jsonl_body(), content_type="application/jsonl", **auth
        )
        assert error(response, 400)["code"] == code, query
        assert response.json()["error"]["field"] == field
    assert BatchJob.objects.count() == 1


def test_jsonl_that_is_not_utf8_is_a_400(client, auth, model):
    response = client.post(
        "/api/batches", b"\xff\xfe{}\n", content_type="application/jsonl", **auth
    )
    assert error(response, 400)["code"] == "invalid_jsonl"


def upload(body: str) -> io.BytesIO:
    file = io.BytesIO(body.encode())
    file.name = "input.jsonl"
    return file


def test_multipart_fields_are_validated(client, auth, model):
    response = client.post("/api/batches", {"name": "no file"}, **auth)
    assert error(response, 400) == {
        "code": "required",
        "message": response.json()["error"]["message"],
        "field": "file",
    }
    response = client.post(
        "/api/batches", {"file": upload(jsonl_body()), "max_attempts": "lots"}, **auth
    )
    assert error(response, 400)["field"] == "max_attempts"
    response = client.post(
        "/api/batches",
        {"file": upload(jsonl_body()), "parameters": json.dumps({"temperature": 0.2})},
        **auth,
    )
    assert response.status_code == 201, response.content
    assert BatchJob.objects.get().parameters == {"temperature": 0.2}


def test_bodies_beyond_the_upload_limit_are_413(client, auth, model, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    big = jsonl_body() * 5
    assert len(big) > 100
    response = client.post("/api/batches", {"file": upload(big)}, **auth)
    assert error(response, 413)["field"] == "file"
    response = client.post("/api/batches", big, content_type="application/jsonl", **auth)
    assert error(response, 413)["code"] == "input_too_large"
    assert BatchJob.objects.count() == 0


def test_results_ignore_accept_and_validate_status(client, auth, model):
    job_id = create(client, auth)["id"]
    client.post(f"/api/batches/{job_id}/cancel", **auth)
    response = client.get(
        f"/api/batches/{job_id}/results?status=cancelled", HTTP_ACCEPT="application/jsonl", **auth
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [line["error"]["code"] for line in lines] == ["cancelled", "cancelled"]
    response = client.get(
        f"/api/batches/{job_id}/results?status=running", HTTP_ACCEPT="application/jsonl", **auth
    )
    assert error(response, 400)["field"] == "status"
    assert response["Content-Type"] == "application/json"


# --- OpenAPI ---------------------------------------------------------------------------------


def test_every_batch_route_is_documented(client):
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    expected = {
        ("/api/batches", "get"): {"200", "400", "401", "403", "429"},
        ("/api/batches", "post"): {"201", "400", "401", "403", "404", "413", "429"},
        ("/api/batches/{job_id}", "get"): {"200", "401", "403", "404", "429"},
        ("/api/batches/{job_id}/pause", "post"): {"200", "400", "401", "403", "404", "409", "429"},
        ("/api/batches/{job_id}/resume", "post"): {"200", "401", "403", "404", "409", "429"},
        ("/api/batches/{job_id}/cancel", "post"): {"200", "401", "403", "404", "409", "429"},
        ("/api/batches/{job_id}/results", "get"): {"200", "400", "401", "403", "404", "429"},
        ("/api/batches/{job_id}/items", "get"): {"200", "400", "401", "403", "404", "429"},
    }
    for (path, method), statuses in expected.items():
        assert set(paths[path][method]["responses"]) >= statuses, (path, method)
    create_body = paths["/api/batches"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/jsonl", "multipart/form-data"} <= set(create_body)
    upload_schema = schema["components"]["schemas"]["BatchUploadRequest"]
    assert upload_schema["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": "The JSONL input, one request per line.",
    }
    results = paths["/api/batches/{job_id}/results"]["get"]["responses"]
    assert set(results["200"]["content"]) == {"application/jsonl"}
    assert results["404"]["content"]["application/json"]["schema"]["$ref"].endswith("BatchError")
