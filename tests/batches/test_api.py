"""The batch HTTP API: create (JSON, JSONL body, multipart), status, transitions, results."""

import io
import json

import pytest
from asgiref.sync import async_to_sync

from batches.models import BatchItem, BatchJob
from tests.batches.helpers import run_worker
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)


def item(custom_id, content="hello", **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


@pytest.fixture
def model(db):
    return mock_model("mock/batch")


def create(client, auth, **payload):
    return client.post("/api/batches", payload, content_type="application/json", **auth)


def test_create_from_json_items(client, auth, model):
    response = create(
        client,
        auth,
        name="demo",
        model="mock/batch",
        concurrency=4,
        items=[item("a"), item("b", temperature=0.5)],
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["status"] == "pending" and data["total_items"] == 2
    assert data["statistics"]["counts"]["pending"] == 2
    job = BatchJob.objects.get(pk=data["id"])
    assert job.concurrency == 4
    b = job.items.get(custom_id="b")
    assert b.params["temperature"] == 0.5 and b.params["model"] == "mock/batch"


def test_create_from_jsonl_body_and_upload(client, auth, model):
    body = jsonl(item("x", model="mock/batch"), "", item("y", model="mock/batch"))
    response = client.post(
        "/api/batches?name=up&concurrency=3", body, content_type="application/jsonl", **auth
    )
    assert response.status_code == 201, response.content
    assert response.json()["total_items"] == 2
    upload = io.BytesIO(body.encode())
    upload.name = "input.jsonl"
    response = client.post(
        "/api/batches", {"file": upload, "name": "multipart", "max_attempts": "5"}, **auth
    )
    assert response.status_code == 201, response.content
    assert response.json()["max_attempts"] == 5


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"items": []}, 400, "empty"),
        ({"items": [item("a"), item("a")], "model": "mock/batch"}, 400, "duplicate_custom_id"),
        ({"items": [item("a")], "model": "mock/nope"}, 404, "model_not_found"),
        ({"items": [item("a")]}, 400, "invalid"),
        ({"items": [{"custom_id": "a", "body": {"model": "mock/batch"}}]}, 400, "required"),
        ({"items": [{"body": {}}], "model": "mock/batch"}, 400, "invalid_custom_id"),
        ({"items": [item("a", temperature=9)], "model": "mock/batch"}, 400, "out_of_range"),
        ({"items": [item("a")], "model": "mock/batch", "concurrency": 0}, 400, "out_of_range"),
        ({"items": "nope"}, 400, "invalid_type"),
    ],
)
def test_bad_input(client, auth, model, payload, status, code):
    response = create(client, auth, **payload)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert BatchJob.objects.count() == 0


def test_too_many_items(client, auth, model, settings):
    settings.TOKENFLOW_BATCH_MAX_ITEMS = 3
    response = create(client, auth, model="mock/batch", items=[item(str(i)) for i in range(4)])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_items"
    assert BatchJob.objects.count() == 0


def test_malformed_jsonl_names_the_line_and_creates_nothing(client, auth, model):
    body = jsonl(item("a", model="mock/batch"), item("b", model="mock/batch"), "{not json")
    response = client.post("/api/batches", body, content_type="application/jsonl", **auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_jsonl" and error["line"] == 3 and "line 3" in error["message"]
    body = jsonl(item("a", model="mock/batch"), {"custom_id": "b", "body": {"model": "mock/batch"}})
    response = client.post("/api/batches", body, content_type="application/jsonl", **auth)
    assert response.status_code == 400 and response.json()["error"]["line"] == 2
    assert BatchJob.objects.count() == BatchItem.objects.count() == 0


def test_handler_must_be_allowed(client, auth, model, settings):
    payload = {
        "model": "mock/batch",
        "items": [item("a")],
        "handler": "tests.batches.policies.give_up_on_429",
    }
    assert create(client, auth, **payload).status_code == 403
    settings.TOKENFLOW_BATCH_HANDLERS = ["tests.batches.policies.give_up_on_429"]
    assert create(client, auth, **payload).status_code == 201


def test_auth_and_ownership(client, auth, model):
    assert client.post("/api/batches", {}, content_type="application/json").status_code == 401
    job_id = create(client, auth, model="mock/batch", items=[item("a")]).json()["id"]
    from accounts.models import ApiKey

    _, other = ApiKey.issue(name="other")
    other_auth = {"HTTP_AUTHORIZATION": f"Bearer {other}"}
    assert client.get(f"/api/batches/{job_id}", **other_auth).status_code == 404
    assert client.get(f"/api/batches/{job_id}", **auth).status_code == 200
    assert client.get("/api/batches/999999", **auth).status_code == 404


def test_lifecycle_results_and_items(client, auth, model, settings):
    settings.TOKENFLOW_BATCH_BACKOFF_BASE = 0.001
    items = [item(f"ok-{i}", f"q{i}") for i in range(5)]
    items.append(
        {"custom_id": "bad", "body": {"prompt": "x", "extra": {"mock": {"fail_before_first": 500}}}}
    )
    job_id = create(client, auth, model="mock/batch", max_attempts=2, items=items).json()["id"]
    job = BatchJob.objects.get(pk=job_id)
    # Not running yet: pause works, resume of a paused one works, resume again is a 409.
    assert client.post(f"/api/batches/{job_id}/pause", **auth).json()["status"] == "paused"
    assert client.post(f"/api/batches/{job_id}/resume", **auth).json()["status"] == "pending"
    response = client.post(f"/api/batches/{job_id}/resume", **auth)
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"

    async_to_sync(run_worker)(job)

    data = client.get(f"/api/batches/{job_id}", **auth).json()
    stats = data["statistics"]
    assert data["status"] == "completed"
    assert stats["counts"]["completed"] == 5 and stats["counts"]["failed"] == 1
    assert stats["tokens"]["completion"] == 10
    assert stats["latency_ms"]["p50"] is not None
    assert stats["errors"]["attempts"] == {"upstream_error": 2}
    assert stats["attempts"]["total"] == 7

    for action in ("pause", "pause?mode=hard", "resume", "cancel"):
        assert client.post(f"/api/batches/{job_id}/{action}", **auth).status_code == 409

    response = client.get(f"/api/batches/{job_id}/results", **auth)
    assert response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [line["custom_id"] for line in lines] == [f"ok-{i}" for i in range(5)] + ["bad"]
    ok = lines[2]
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"]["status_code"] == 200
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "mock/batch"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: q2"}
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert lines[-1]["response"] is None and lines[-1]["error"]["code"] == "upstream_error"

    failed = client.get(f"/api/batches/{job_id}/items?status=failed", **auth).json()
    assert failed["total"] == 1
    (bad,) = failed["data"]
    assert bad["custom_id"] == "bad" and bad["attempts"] == 2
    assert [a["status_code"] for a in bad["trajectory"]] == [502, 502]
    assert client.get(f"/api/batches/{job_id}/items?status=nope", **auth).status_code == 400
    assert client.get(f"/api/batches/{job_id}/items?limit=2", **auth).json()["total"] == 6


def test_pause_mode_is_validated_and_cancel_works(client, auth, model):
    job_id = create(client, auth, model="mock/batch", items=[item("a"), item("b")]).json()["id"]
    assert client.post(f"/api/batches/{job_id}/pause?mode=later", **auth).status_code == 400
    data = client.post(f"/api/batches/{job_id}/pause?mode=hard", **auth).json()
    assert data["status"] == "paused"
    data = client.post(f"/api/batches/{job_id}/cancel", **auth).json()
    assert data["status"] == "cancelled"
    assert data["statistics"]["counts"]["cancelled"] == 2
    assert client.post(f"/api/batches/{job_id}/cancel", **auth).status_code == 409


def test_list_jobs(client, auth, model):
    create(client, auth, model="mock/batch", items=[item("a")])
    data = client.get("/api/batches", **auth).json()
    assert len(data["data"]) == 1 and data["data"][0]["model"] == "mock/batch"
