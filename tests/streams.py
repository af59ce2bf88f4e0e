"""Reading streamed responses in tests."""

import json


def parse_sse(body: str) -> list[tuple[str, dict]]:
    """[(event name, data)] of an SSE body (comment/keep-alive blocks skipped)."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def read_body(response) -> str:
    """The whole body of a (streaming) Django test response."""
    return b"".join([part async for part in response.streaming_content]).decode()
