import json

import pytest

from routing.providers.mock import reset_mock_calls


@pytest.fixture(autouse=True)
def _fast_retries(settings):
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001
    reset_mock_calls()


def parse_sse(body: str) -> list[tuple[str, dict]]:
    """[(event name, data)] of an SSE body."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def read_stream(response) -> str:
    parts = [chunk async for chunk in response.streaming_content]
    return b"".join(parts).decode()


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
        return response, parse_sse(await read_stream(response))

    return post
