"""The OpenAI SDK's Batch workflow, unchanged, against a live TokenFlow (daphne) and a
`manage.py batch_worker` subprocess on the mock model: files.create -> batches.create ->
retrieve until completed -> files.content."""

import io
import json
import os
import subprocess
import sys
import time

import openai
import pytest
from django.conf import settings

from accounts.models import ApiKey
from openai_batches.models import File, OpenAIBatch
from tests.factories import mock_model
from tests.live import database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """One batch worker process for the module (all jobs, fast polling)."""
    with django_db_blocker.unblock():
        env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING"}
    log = (tmp_path_factory.mktemp("worker") / "worker.log").open("wb")
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "batch_worker"]
    process = subprocess.Popen(
        [*command, "--poll", "0.1", "--lease", "10", "--quiet"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    log.close()


def _client(url: str, name: str) -> openai.OpenAI:
    _row, raw = ApiKey.issue(name=name)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0, timeout=30)


@pytest.fixture
def client(live_server_url):
    with _client(live_server_url, "batch-sdk") as c:
        yield c


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def request_line(custom_id: str, model: str, text: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.2)


def test_sdk_batch_workflow_end_to_end(client, worker, live_server_url):
    mock_model("mock/batch")
    mock_model("mock/refuses", fail_before_first=400)
    lines = [request_line(f"q-{i}", "mock/batch", f"question {i}") for i in range(5)]
    lines.append(request_line("bad-1", "mock/refuses", "never answered", max_completion_tokens=5))
    uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert uploaded.filename == "input.jsonl"

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "sdk-test"},
    )
    assert batch.status == "in_progress" and batch.metadata == {"run": "sdk-test"}
    assert batch.request_counts.total == 6

    done = wait_done(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)
    assert done.completed_at is not None and done.output_file_id and done.error_file_id

    output = [
        json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()
    ]
    by_id = {line["custom_id"]: line for line in output}
    assert sorted(by_id) == [f"q-{i}" for i in range(5)]
    answer = by_id["q-3"]["response"]
    assert answer["status_code"] == 200
    assert answer["body"]["choices"][0]["message"]["content"] == "Echo: question 3"
    assert answer["body"]["object"] == "chat.completion"

    errors = [
        json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()
    ]
    assert [line["custom_id"] for line in errors] == ["bad-1"]
    assert errors[0]["response"] is None and errors[0]["error"]["code"]

    # Retrieving again does not produce the files twice.
    again = client.batches.retrieve(batch.id)
    assert again.output_file_id == done.output_file_id
    assert File.objects.filter(purpose="batch_output").count() == 2
    listed = client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    # Another key sees none of it: the same 404 as a missing id.
    with _client(live_server_url, "stranger") as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.content(done.output_file_id)
        assert stranger.batches.list().data == []


def test_sdk_cancel_and_bad_input(client, worker):
    mock_model("mock/slow-batch", token_delay=0.5)
    lines = [request_line(f"s-{i}", "mock/slow-batch", "one two three four") for i in range(40)]
    uploaded = client.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.error_file_id is not None  # the unfinished requests, as errors
    assert OpenAIBatch.objects.get().job.status == "cancelled"

    tools = [request_line("t-1", "mock/slow-batch", "x", tools=[{"type": "function"}])]
    bad = client.files.create(file=("tools.jsonl", jsonl(tools)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "line 1" in info.value.message and "tools" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert info.value.code == "unsupported_endpoint"
