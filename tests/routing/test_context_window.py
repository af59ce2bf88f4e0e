"""Every model's context window is enforced: prompt tokens + max_tokens (issue 11, finding 5)."""

import pytest
from asgiref.sync import sync_to_async

from routing.models import Generation
from routing.services.generation import GenerationParams, generation_prepare
from tests.factories import mock_model
from tokenflow_site.errors import ApiError

pytestmark = pytest.mark.django_db


def test_prompt_plus_max_tokens_over_the_window_is_a_clear_400():
    model = mock_model("mock/small", context_window=100)
    messages = [{"role": "user", "content": "word " * 60}]
    with pytest.raises(ApiError) as info:
        generation_prepare(
            model=model,
            messages=messages,
            params=GenerationParams(max_tokens=50),
            api_key=None,
            transport="test",
        )
    error = info.value
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert "context window of 100 tokens" in error.message and "max_tokens" in error.message
    assert error.field == "max_tokens"
    assert not Generation.objects.exists()  # nothing half-saved


def test_a_prompt_alone_over_the_window_names_the_messages():
    model = mock_model("mock/tiny", context_window=10)
    with pytest.raises(ApiError) as info:
        generation_prepare(
            model=model,
            messages=[{"role": "user", "content": "word " * 40}],
            params=GenerationParams(),
            api_key=None,
            transport="test",
        )
    assert info.value.field == "messages"


@pytest.mark.django_db(transaction=True)
async def test_over_the_window_on_every_transport(async_client, auth):
    await sync_to_async(mock_model)("mock/win", context_window=50)
    body = {"model": "mock/win", "prompt": "hello", "max_tokens": 100}
    headers = {"Authorization": auth["HTTP_AUTHORIZATION"]}
    sse = await async_client.post(
        "/api/generate", body, content_type="application/json", headers=headers
    )
    assert sse.status_code == 400 and sse.json()["error"]["code"] == "context_length_exceeded"
    chat = {"model": "mock/win", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99}
    v1 = await async_client.post(
        "/v1/chat/completions", chat, content_type="application/json", headers=headers
    )
    assert v1.status_code == 400 and v1.json()["error"]["code"] == "context_length_exceeded"
