"""Render the generation event stream as SSE or NDJSON (one async iterator, many formats)."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

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


def render_ndjson(event: StreamEvent) -> str:
    """Ollama-style lines: every line carries `response` and `done` (so a reader doing
    line["response"] never fails); other events ride along under their own name."""
    if event.type == "text":
        line = {"response": event.data["text"], "done": False}
    elif event.type == "end":
        line = {"response": "", "done": True, **event.data}
    elif event.type == "error":
        line = {"response": "", "done": True, "error": event.data}
    else:  # metadata, info, agent_done, agent_failed, ...
        line = {"response": "", "done": False, event.type: event.data}
    return _dumps(line) + "\n"


SSE_DESCRIPTION = """Server-sent events, one JSON `data:` per event:

| event | data |
|---|---|
| `metadata` | `{generation_id, model, provider, upstream_model}`; with model `auto` also `{selected_model, top_category, confidence, scores, classification_id, route, fallbacks, skipped}` |
| `info` | `{queue_position}` (local model queue) or `{fallback: {from, to, reason, code}}` |
| `text_chunk` | `{text}` |
| `error` | `{message, code, status, generation_id}`: the stream failed after it started; the generation is stored as failed |
| `end_stream` | `{generation_id, finish_reason, usage: {prompt_tokens, completion_tokens, total_tokens}}` |

Fan-out (`/api/process`) adds `agent_done` `{agent, model, generation_id, duration_ms, text}` and
`agent_failed` `{agent, model, generation_id, duration_ms, code, reason}`."""

NDJSON_DESCRIPTION = """One JSON object per line (Ollama style). Every line has `response` (text, may be
empty) and `done`; the first carries `metadata`, others may carry `info` (or the fan-out's
`agent_done` / `agent_failed`); the last has `"done": true` and either the end fields
(`generation_id`, `finish_reason`, `usage`) or `error`."""

STREAM_RESPONSES = {
    (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description=SSE_DESCRIPTION),
    (200, "application/x-ndjson"): OpenApiResponse(
        OpenApiTypes.STR, description=NDJSON_DESCRIPTION
    ),
    **{
        (status, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description=description)
        for status, description in (
            (404, "Unknown or disabled model (`model_not_found`)."),
            (409, "A conflicting request is in progress."),
            (502, "The upstream failed before the stream started."),
            (
                503,
                "No model can serve, a provider is not configured, or a queue is full "
                "(`Retry-After`).",
            ),
            (504, "The upstream timed out before the stream started."),
        )
    },
}
STREAM_PARAMETERS = [
    OpenApiParameter(
        "format",
        str,
        OpenApiParameter.QUERY,
        enum=["sse", "ndjson"],
        description="`ndjson` for NDJSON (or send `Accept: application/x-ndjson`).",
    )
]


def wants_ndjson(request: HttpRequest) -> bool:
    return request.GET.get("format") == "ndjson" or "application/x-ndjson" in request.headers.get(
        "Accept", ""
    )


def event_stream_response(
    events: AsyncIterator[StreamEvent], *, ndjson: bool = False, headers: dict | None = None
) -> StreamingHttpResponse:
    """A StreamingHttpResponse that flushes every event; closing it closes `events`."""
    render: Callable[[StreamEvent], str] = render_ndjson if ndjson else render_sse

    async def body():
        try:
            async for event in events:
                yield render(event).encode()
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
