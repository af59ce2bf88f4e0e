"""The official `openai` client, unchanged, against a live TokenFlow (daphne subprocess)."""

import time

import httpx
import openai
import pytest

from accounts.models import ApiKey
from routing.models import Generation
from tests.factories import mock_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(live_server_url):
    _row, raw = ApiKey.issue(name="openai-live")
    with openai.OpenAI(
        base_url=f"{live_server_url}/v1", api_key=raw, max_retries=0, timeout=30
    ) as c:
        yield c


def test_models_list(client):
    mock_model("mock/listed")
    mock_model("mock/hidden", enabled=False)
    names = [model.id for model in client.models.list()]
    assert "mock/listed" in names and "mock/hidden" not in names


def test_non_streaming_completion(client):
    model = mock_model("mock/ns", response="Bonjour tout le monde")
    completion = client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "hi"}], max_tokens=10
    )
    assert completion.choices[0].message.content == "Bonjour tout le monde"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 4
    row = Generation.objects.get(pk=int(completion.id.removeprefix("chatcmpl-")))
    assert row.status == "completed" and row.transport == "openai"


def test_streaming_completion_with_usage(client):
    model = mock_model("mock/s", response="one two three")
    stream = client.chat.completions.create(
        model=model.name,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices


def test_errors_in_openai_shape(client, live_server_url):
    mock_model("mock/ok")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="mock/ok", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert info.value.code == "out_of_range" and info.value.param == "temperature"
    bad = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key="tf_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bad.close()


def test_mid_stream_fault_raises_in_the_client(client):
    model = mock_model("mock/broken", response="a b c d", fail_after=2)
    stream = client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _chunk in stream:
            pass
    row = Generation.objects.get(model_name="mock/broken")
    assert row.status == "failed" and row.output_text == "a b"


def test_http_client_disconnect_cancels_the_row(client, live_server_url):
    """A real socket closed mid-stream: daphne tells Django, the row ends cancelled."""
    model = mock_model("mock/slow", response="w1 w2 w3", token_delay=0.01, stall_after=1)
    key = client.api_key
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{live_server_url}/api/generate",
            json={"model": model.name, "prompt": "x"},
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("event: text_chunk"):
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = Generation.objects.get(model_name="mock/slow")
        if row.status == "cancelled":
            break
        time.sleep(0.05)
    assert row.status == "cancelled" and row.output_text == "w1"
