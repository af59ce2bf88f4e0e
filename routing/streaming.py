"""Render the generation event stream as SSE or NDJSON (one async iterator, many formats)."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from routing.services.generation import StreamEvent
from tokenflow_site.errors import ErrorSerializer

SSE_EVENT_NAMES = {
    "metadata": "metadata",
    "text": "text_chunk",
    "error": "error",
    "end": "end_stream",
}


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def render_sse(event: StreamEvent) -> str:
    """`event: <name>` + `data: <json>`; other types keep their own name (agent_done...)."""
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
| `metadata` | `{generation_id, model, provider, upstream_model}`; with model `auto` also `{selected_model, top_category, confidence, scores, classification_id, route, fallbacks, skipped}`; when the response cache was consulted `{cache: exact/semantic/miss}` (a hit adds `cache_entry_id`, `cached_generation_id`, and `cache_similarity` when semantic) |
| `info` | `{queue_position}` (local model queue) or `{fallback: {from, to, reason, code}}` |
| `text_chunk` | `{text}` |
| `error` | `{message, code, status, generation_id}`: the stream failed after it started; the generation is stored as failed |
| `end_stream` | `{generation_id, finish_reason, usage: {prompt_tokens, completion_tokens, total_tokens}, cost_usd}` |

Fan-out (`/api/process`) adds `agent_done` `{agent, model, generation_id, duration_ms, text}` and
`agent_failed` `{agent, model, generation_id, duration_ms, code, reason}`; with
`"stream_agents": true` also `agent_delta` `{agent, generation_id, text}` per chunk of an agent's
answer, before that agent's `agent_done` / `agent_failed`."""

NDJSON_DESCRIPTION = """One JSON object per line (Ollama style). Every line has `response` (text, may be
empty) and `done`; the first carries `metadata`, others may carry `info` (or the fan-out's
`agent_delta` / `agent_done` / `agent_failed`); the last has `"done": true` and either the end fields
(`generation_id`, `finish_reason`, `usage`, `cost_usd`) or `error`."""

# --- documentation of the stream (OpenAPI components) ------------------------------------


class StreamUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class StreamMetadataSerializer(serializers.Serializer):
    """The first event: which generation and model; with model "auto" also the routing."""

    generation_id = serializers.IntegerField()
    model = serializers.CharField()
    provider = serializers.CharField()
    upstream_model = serializers.CharField(allow_blank=True)
    selected_model = serializers.CharField(required=False)
    top_category = serializers.CharField(required=False, allow_null=True)
    confidence = serializers.FloatField(required=False, allow_null=True)
    scores = serializers.ListField(child=serializers.DictField(), required=False)
    classification_id = serializers.IntegerField(required=False, allow_null=True)
    route = serializers.DictField(required=False, allow_null=True)
    fallbacks = serializers.ListField(child=serializers.CharField(), required=False)
    skipped = serializers.ListField(child=serializers.DictField(), required=False)
    cache = serializers.ChoiceField(
        choices=["exact", "semantic", "miss"],
        required=False,
        help_text="Response cache result (also the `x-tokenflow-cache` header); absent when "
        "the request was not cacheable.",
    )
    cache_similarity = serializers.FloatField(required=False, help_text="Semantic hits.")
    cache_entry_id = serializers.IntegerField(required=False)
    cached_generation_id = serializers.IntegerField(
        required=False, allow_null=True, help_text="The generation whose answer was replayed."
    )


class StreamInfoSerializer(serializers.Serializer):
    queue_position = serializers.IntegerField(required=False)
    fallback = serializers.DictField(
        required=False, help_text="`{from, to, reason, code}`: the model that failed and the next."
    )


class StreamErrorSerializer(serializers.Serializer):
    """The stream failed after it started; the generation is stored as failed."""

    message = serializers.CharField()
    code = serializers.CharField()
    status = serializers.IntegerField()
    generation_id = serializers.IntegerField(allow_null=True)
    retry_after = serializers.FloatField(required=False, allow_null=True)


class StreamEndSerializer(serializers.Serializer):
    generation_id = serializers.IntegerField()
    finish_reason = serializers.CharField()
    usage = StreamUsageSerializer()
    cost_usd = serializers.FloatField(help_text="What the call cost in USD (the model's prices).")


class SseEventSerializer(serializers.Serializer):
    """One server-sent event as a client reads it: the event name and its JSON `data`."""

    event = serializers.ChoiceField(
        choices=[*SSE_EVENT_NAMES.values(), "info", "agent_delta", "agent_done", "agent_failed"]
    )
    data = serializers.CharField(
        help_text="JSON: `StreamMetadata` (metadata), `StreamInfo` (info), `{text}` "
        "(text_chunk), `StreamError` (error), `StreamEnd` (end_stream)."
    )


class NdjsonLineSerializer(serializers.Serializer):
    """One NDJSON line (Ollama style); the stream is one such object per line."""

    response = serializers.CharField(allow_blank=True, help_text="Text; may be empty.")
    done = serializers.BooleanField()
    metadata = StreamMetadataSerializer(required=False)
    info = StreamInfoSerializer(required=False)
    error = StreamErrorSerializer(required=False)
    generation_id = serializers.IntegerField(required=False)
    finish_reason = serializers.CharField(required=False)
    usage = StreamUsageSerializer(required=False)
    agent_delta = serializers.DictField(required=False)
    agent_done = serializers.DictField(required=False)
    agent_failed = serializers.DictField(required=False)


STREAM_RESPONSES = {
    (200, "text/event-stream"): OpenApiResponse(SseEventSerializer, description=SSE_DESCRIPTION),
    (200, "application/x-ndjson"): OpenApiResponse(
        NdjsonLineSerializer, description=NDJSON_DESCRIPTION
    ),
    **{
        (status, "application/json"): OpenApiResponse(ErrorSerializer, description=description)
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


class StreamQuerySerializer(serializers.Serializer):
    """The query string of the streaming endpoints."""

    format = serializers.ChoiceField(
        choices=["sse", "ndjson"],
        required=False,
        help_text="`ndjson` for NDJSON (or send `Accept: application/x-ndjson`); default SSE.",
    )


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
