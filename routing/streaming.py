"""Render the generation event stream as SSE or NDJSON (one async iterator, many formats)."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse

from routing.services.generation import StreamEvent

SSE_EVENT_NAMES = {
    "metadata": "metadata",
    "text": "text_chunk",
    "error": "error",
    "end": "end_stream",
}


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def render_sse(event: StreamEvent) -> str:
    """`event: <name>` + `data: <json>`; unknown types keep their own name (agent_done...)."""
    name = SSE_EVENT_NAMES.get(event.type, event.type)
    return f"event: {name}\ndata: {_dumps(event.data)}\n\n"


def render_ndjson(event: StreamEvent) -> str | None:
    """Ollama-style lines: {"response": ...} per chunk, a final {"done": true, ...}."""
    if event.type == "text":
        return _dumps({"response": event.data["text"], "done": False}) + "\n"
    if event.type == "end":
        return _dumps({"response": "", "done": True, **event.data}) + "\n"
    if event.type == "error":
        return _dumps({"error": event.data, "done": True}) + "\n"
    if event.type == "metadata":
        return _dumps({"metadata": event.data, "done": False}) + "\n"
    return None


def wants_ndjson(request: HttpRequest) -> bool:
    return request.GET.get("format") == "ndjson" or "application/x-ndjson" in request.headers.get(
        "Accept", ""
    )


def event_stream_response(
    events: AsyncIterator[StreamEvent], *, ndjson: bool = False, headers: dict | None = None
) -> StreamingHttpResponse:
    """A StreamingHttpResponse that flushes every event; closing it closes `events`."""
    render: Callable[[StreamEvent], str | None] = render_ndjson if ndjson else render_sse

    async def body():
        try:
            async for event in events:
                line = render(event)
                if line:
                    yield line.encode()
        finally:
            await events.aclose()

    response = StreamingHttpResponse(
        body(), content_type="application/x-ndjson" if ndjson else "text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
