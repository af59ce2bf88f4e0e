"""OpenAI-compatible surface: POST /v1/chat/completions (stream and not), POST
/v1/completions (legacy) and GET /v1/models.

The official `openai` client works unchanged with base_url=http://host/v1. Errors use
OpenAI's shape {"error": {"message", "type", "param", "code"}} with TokenFlow's codes.
Both completion routes render the one event stream of the generation service: text
deltas, tool-call deltas (relayed as they come) and the end event with usage.
"""

import json
import time
from contextlib import aclosing
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers

from routing.models import ModelRanking, Prompt
from routing.openai_serializers import ChatCompletionRequestSerializer, CompletionRequestSerializer
from routing.services.generation import (
    GenerationRequest,
    PreparedGeneration,
    StreamEvent,
    generation_acreate,
    options_ignored,
)
from tokenflow_site.endpoints import api_endpoint
from tokenflow_site.errors import ApiError, openai_error_response

IGNORED_HEADER = "x-tokenflow-ignored-fields"


OPENAI_ERRORS = {
    400: "Invalid request (`invalid_request_error`).",
    401: "Missing or invalid API key.",
    403: "Not allowed (a non-staff session, CSRF).",
    404: "Unknown or disabled model.",
    413: "Input larger than the limit.",
    429: "Rate limited (`Retry-After`).",
    502: "Upstream error.",
    503: "No model can serve / provider not configured / queue full.",
    504: "Upstream timeout.",
}


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField()


class OpenAIErrorSerializer(serializers.Serializer):
    """OpenAI's error shape; every /v1/ error uses it (tokenflow_site.errors)."""

    error = OpenAIErrorDetailSerializer()


class CompletionUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ToolCallFunctionSerializer(serializers.Serializer):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="JSON text, as the model wrote it.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    function = ToolCallFunctionSerializer()


class ChatCompletionMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True, allow_blank=True)
    tool_calls = ToolCallSerializer(many=True, required=False)


class ChatCompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatCompletionMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True, required=False)
    finish_reason = serializers.CharField()


class ChatCompletionSerializer(serializers.Serializer):
    """Documentation of the non-streaming response (OpenAI's chat.completion)."""

    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatCompletionChoiceSerializer(many=True)
    usage = CompletionUsageSerializer()


class TextCompletionChoiceSerializer(serializers.Serializer):
    text = serializers.CharField(allow_blank=True)
    index = serializers.IntegerField()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.CharField()


class TextCompletionSerializer(serializers.Serializer):
    """Documentation of the legacy text_completion response."""

    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = TextCompletionChoiceSerializer(many=True)
    usage = CompletionUsageSerializer()


class CompletionChunkEventSerializer(serializers.Serializer):
    """One server-sent event of `stream: true`: a `data:` line, no event name."""

    data = serializers.CharField(
        help_text="A JSON chunk (`chat.completion.chunk` or `text_completion`), a JSON usage "
        'chunk, a JSON `{"error": {...}}` (failure after the stream started), or the final '
        "`[DONE]`."
    )


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField()
    data = OpenAIModelSerializer(many=True)


def _chunk(
    gen_id: str,
    model: str,
    created: int,
    choice: dict | None,
    *,
    kind: str = "chat.completion.chunk",
    usage=None,
) -> dict:
    body: dict[str, Any] = {
        "id": gen_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [{"index": 0, **choice}] if choice is not None else [],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _sse(data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def _sse_error(data: dict[str, Any]) -> bytes:
    return _sse(
        {
            "error": {
                "message": data["message"],
                "type": "api_error",
                "param": None,
                "code": data["code"],
            }
        }
    )


async def _stream_body(events, *, model: str, include_usage: bool):
    """chat.completion.chunk per text or tool-call delta, as they come."""
    created, gen_id, first = int(time.time()), "chatcmpl-0", True
    async with aclosing(events):
        async for event in events:
            if event.type == "metadata":
                gen_id = f"chatcmpl-{event.data['generation_id']}"
            elif event.type in ("text", "tool_call"):
                logprobs = None
                if event.type == "text":
                    delta: dict[str, Any] = {"content": event.data["text"]}
                    if event.data.get("logprobs"):
                        logprobs = {"content": event.data["logprobs"]}
                else:
                    delta = {"tool_calls": [event.data]}
                if first:
                    delta, first = {"role": "assistant", **delta}, False
                choice = {"delta": delta, "logprobs": logprobs, "finish_reason": None}
                yield _sse(_chunk(gen_id, model, created, choice))
            elif event.type == "end":
                choice = {
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": event.data["finish_reason"],
                }
                yield _sse(_chunk(gen_id, model, created, choice))
                if include_usage:
                    yield _sse(_chunk(gen_id, model, created, None, usage=event.data["usage"]))
                yield _sse("[DONE]")
            elif event.type == "error":
                yield _sse_error(event.data)


async def _collect(events) -> tuple[str, dict[str, Any], list[dict], StreamEvent | JsonResponse]:
    """Run the stream to its end: (id, text, logprobs, end event) or an error response."""
    text: list[str] = []
    logprobs: list[dict] = []
    gen_id = "0"
    async with aclosing(events):
        async for event in events:
            if event.type == "metadata":
                gen_id = str(event.data["generation_id"])
            elif event.type == "text":
                text.append(event.data["text"])
                logprobs.extend(event.data.get("logprobs") or [])
            elif event.type == "end":
                return gen_id, "".join(text), logprobs, event
            elif event.type == "error":
                data = event.data
                return (
                    gen_id,
                    "",
                    [],
                    openai_error_response(
                        ApiError(
                            data["message"],
                            code=data["code"],
                            status=data.get("status") or 502,
                            retry_after=data.get("retry_after"),
                        )
                    ),
                )
    raise RuntimeError("the generation stream ended without an end event")


async def _complete(events, *, model: str) -> JsonResponse:
    gen_id, text, logprobs, end = await _collect(events)
    if isinstance(end, JsonResponse):
        return end
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if end.data.get("tool_calls"):
        message["tool_calls"] = end.data["tool_calls"]
        message["content"] = text or None
    return JsonResponse(
        {
            "id": f"chatcmpl-{gen_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": logprobs} if logprobs else None,
                    "finish_reason": end.data["finish_reason"],
                }
            ],
            "usage": end.data["usage"],
        }
    )


async def _text_stream_body(events, *, model: str, include_usage: bool, echo: str):
    """Legacy completions streamed: text_completion objects with `text` deltas."""
    created, gen_id = int(time.time()), "cmpl-0"
    kind = "text_completion"
    async with aclosing(events):
        async for event in events:
            if event.type == "metadata":
                gen_id = f"cmpl-{event.data['generation_id']}"
                if echo:
                    choice = {"text": echo, "logprobs": None, "finish_reason": None}
                    yield _sse(_chunk(gen_id, model, created, choice, kind=kind))
            elif event.type == "text":
                choice = {"text": event.data["text"], "logprobs": None, "finish_reason": None}
                yield _sse(_chunk(gen_id, model, created, choice, kind=kind))
            elif event.type == "end":
                choice = {
                    "text": "",
                    "logprobs": None,
                    "finish_reason": event.data["finish_reason"],
                }
                yield _sse(_chunk(gen_id, model, created, choice, kind=kind))
                if include_usage:
                    yield _sse(
                        _chunk(gen_id, model, created, None, kind=kind, usage=event.data["usage"])
                    )
                yield _sse("[DONE]")
            elif event.type == "error":
                yield _sse_error(event.data)


async def _text_complete(events, *, model: str, echo: str) -> JsonResponse:
    gen_id, text, _logprobs, end = await _collect(events)
    if isinstance(end, JsonResponse):
        return end
    return JsonResponse(
        {
            "id": f"cmpl-{gen_id}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "text": echo + text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": end.data["finish_reason"],
                }
            ],
            "usage": end.data["usage"],
        }
    )


@api_endpoint(
    ChatCompletionRequestSerializer,
    render_error=openai_error_response,
    responses={
        200: OpenApiResponse(
            ChatCompletionSerializer,
            description="`stream: false`: a chat.completion object.",
        ),
        (200, "text/event-stream"): OpenApiResponse(
            CompletionChunkEventSerializer,
            description="`stream: true`: `data: <chat.completion.chunk>` lines, the last "
            "chunk with `finish_reason`, an optional usage chunk "
            "(`stream_options.include_usage`), then `data: [DONE]`. A failure after the "
            'stream started is a `data: {"error": {...}}` line.',
        ),
        **{
            status: OpenApiResponse(OpenAIErrorSerializer, description=description)
            for status, description in OPENAI_ERRORS.items()
        },
    },
    summary="OpenAI-compatible chat completions",
    examples=[
        OpenApiExample(
            "Routed, streamed",
            value={
                "model": "auto",
                "messages": [{"role": "user", "content": "Say hello."}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            request_only=True,
        ),
        OpenApiExample(
            "Not streamed",
            value={"model": "auto", "messages": [{"role": "user", "content": "Say hello."}]},
            request_only=True,
        ),
    ],
)
async def chat_completions(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """OpenAI's chat completions with tools, structured output (`response_format`) and
    image parts; `model: "auto"` classifies and routes to a model with the capabilities the
    request needs. Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`."""
    try:
        prepared = await generation_acreate(
            request=data, api_key=request.api_key, transport="openai", source=Prompt.Source.OPENAI
        )
    except ApiError as exc:
        return openai_error_response(exc)
    events, model = prepared.events(), prepared.generation.model_name
    if not data.extra["stream"]:
        response = await _complete(events, model=model)
    else:
        response = _event_stream(
            _stream_body(events, model=model, include_usage=data.extra["include_usage"])
        )
    return _with_headers(response, prepared, data)


def _event_stream(body) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _with_headers(
    response: HttpResponse, prepared: PreparedGeneration, data: GenerationRequest
) -> HttpResponse:
    """The route header (model "auto") and `x-tokenflow-ignored-fields`: the unknown
    request fields this model's allowlist did not let through."""
    for name, value in prepared.headers.items():
        response[name] = value
    ignored = options_ignored(data.options, prepared.generation.model)
    if ignored:
        response[IGNORED_HEADER] = ",".join(ignored)
    return response


@api_endpoint(
    CompletionRequestSerializer,
    render_error=openai_error_response,
    responses={
        200: OpenApiResponse(
            TextCompletionSerializer,
            description="`stream: false`: a text_completion object.",
        ),
        (200, "text/event-stream"): OpenApiResponse(
            CompletionChunkEventSerializer,
            description="`stream: true`: `data: <text_completion>` lines with text deltas, "
            "the last with `finish_reason`, an optional usage chunk, then `data: [DONE]`.",
        ),
        **{
            status: OpenApiResponse(OpenAIErrorSerializer, description=description)
            for status, description in OPENAI_ERRORS.items()
        },
    },
    summary="OpenAI-compatible legacy completions",
)
async def completions(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Legacy text completions on the same generation service: the prompt is sent as one
    user message (chat models have no raw-text mode), `echo` prepends it to the answer."""
    try:
        prepared = await generation_acreate(
            request=data, api_key=request.api_key, transport="openai", source=Prompt.Source.OPENAI
        )
    except ApiError as exc:
        return openai_error_response(exc)
    events, model = prepared.events(), prepared.generation.model_name
    echo = data.extra["prompt"] if data.extra.get("echo") else ""
    if not data.extra["stream"]:
        response = await _text_complete(events, model=model, echo=echo)
    else:
        response = _event_stream(
            _text_stream_body(
                events, model=model, include_usage=data.extra["include_usage"], echo=echo
            )
        )
    return _with_headers(response, prepared, data)


def _models_payload() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model.name,
                "object": "model",
                "created": int(model.created_at.timestamp()),
                "owned_by": model.provider,
            }
            for model in ModelRanking.objects.enabled().order_by("rank", "name")
        ],
    }


@api_endpoint(
    methods=("GET",),
    render_error=openai_error_response,
    responses={200: ModelListSerializer},
    summary="OpenAI-compatible model list",
)
async def models(request: HttpRequest, data: None) -> JsonResponse:
    """The enabled models, OpenAI's `list` of `model` objects."""
    return JsonResponse(await sync_to_async(_models_payload)())
