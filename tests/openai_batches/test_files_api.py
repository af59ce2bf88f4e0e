"""/v1/files and /v1/batches in process: upload limits, ownership, validation, pages."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import ApiKey
from batches.models import BatchJob
from openai_batches.models import File
from openai_batches.selectors import file_path
from tests.factories import mock_model

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def files_dir(settings, tmp_path):
    settings.TOKENFLOW_FILES_DIR = tmp_path / "files"
    return settings.TOKENFLOW_FILES_DIR


def client_for(name: str) -> Client:
    _row, raw = ApiKey.issue(name=name)
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


def lines(n: int, model: str = "mock/f") -> bytes:
    rows = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: Client, data: bytes, purpose: str = "batch", name: str = "in.jsonl"):
    return client.post("/v1/files", {"purpose": purpose, "file": SimpleUploadedFile(name, data)})


def test_upload_is_stored_on_disk_and_read_back(files_dir):
    client = client_for("a")
    data = lines(3)
    response = upload(client, data)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "file" and body["bytes"] == len(data) and body["purpose"] == "batch"
    row = File.objects.get(pk=int(body["id"].removeprefix("file-")))
    assert file_path(row).read_bytes() == data and file_path(row).parent == files_dir
    content = client.get(f"/v1/files/{body['id']}/content")
    assert b"".join(content.streaming_content) == data
    assert client.get(f"/v1/files/{body['id']}").json()["filename"] == "in.jsonl"
    assert not list(files_dir.glob("*.part"))


def test_upload_over_the_limit_is_a_413_and_leaves_nothing(settings, files_dir):
    settings.TOKENFLOW_MAX_UPLOAD_BYTES = 100
    client = client_for("a")
    response = upload(client, b"x" * 5000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not File.objects.exists() and not list(files_dir.iterdir())


def test_bad_uploads(files_dir):
    client = client_for("a")
    response = upload(client, lines(1), purpose="fine-tune")
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    assert not list(files_dir.iterdir())  # the streamed part was discarded
    response = client.post("/v1/files", {"purpose": "batch"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_another_keys_files_and_batches_are_404():
    mock_model("mock/f")
    owner, stranger = client_for("owner"), client_for("stranger")
    file_id = upload(owner, lines(2)).json()["id"]
    batch = owner.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        content_type="application/json",
    ).json()
    assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 2
    assert BatchJob.objects.get(pk=batch["tokenflow"]["job_id"]).total_items == 2
    for path in (
        f"/v1/files/{file_id}",
        f"/v1/files/{file_id}/content",
        f"/v1/batches/{batch['id']}",
        "/v1/files/file-999999",
        "/v1/files/not-an-id",
        "/v1/batches/batch_x",
    ):
        response = stranger.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"
    response = stranger.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        content_type="application/json",
    )
    assert response.status_code == 404
    assert stranger.delete(f"/v1/files/{file_id}").status_code == 404
    assert owner.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelled"
    assert owner.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409
    deleted = owner.delete(f"/v1/files/{file_id}").json()
    assert deleted == {"id": file_id, "object": "file", "deleted": True}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
        ({"endpoint": "/v1/completions", "completion_window": "24h"}, "not supported"),
        (
            {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {f"k{i}": "v" for i in range(17)},
            },
            "metadata",
        ),
    ],
)
def test_bad_batch_requests(body, fragment):
    mock_model("mock/f")
    client = client_for("a")
    file_id = upload(client, lines(1)).json()["id"]
    response = client.post(
        "/v1/batches", {"input_file_id": file_id, **body}, content_type="application/json"
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"] + str(response.json()["error"]["param"])


def test_bad_lines_name_the_line():
    mock_model("mock/f")
    client = client_for("a")
    data = lines(2) + b'{"custom_id": "x", "body": {"model": "nope", "messages": []}}\n'
    file_id = upload(client, data).json()["id"]
    response = client.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        content_type="application/json",
    )
    assert response.status_code in (400, 404)
    assert response.json()["error"]["message"].startswith("line 3")
    assert not BatchJob.objects.exists()


def test_lists_are_cursor_pages():
    mock_model("mock/f")
    client = client_for("a")
    ids = [upload(client, io.BytesIO(lines(1)).getvalue()).json()["id"] for _ in range(3)]
    first = client.get("/v1/files", {"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", {"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert client.get("/v1/files", {"limit": 1000}).status_code == 400
