import pytest

from routing.providers.mock import reset_mock_calls
from tests.streams import parse_sse, read_body


@pytest.fixture(autouse=True)
def _fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001
    reset_mock_calls()


@pytest.fixture
def sse():
    async def post(async_client, auth, payload, headers=None):
        response = await async_client.post(
            "/api/process",
            payload,
            content_type="application/json",
            headers={"Authorization": auth["HTTP_AUTHORIZATION"], **(headers or {})},
        )
        if not getattr(response, "streaming", False):
            return response, None
        return response, parse_sse(await read_body(response))

    return post
