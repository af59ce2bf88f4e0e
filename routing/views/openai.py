"""OpenAI-compatible surface: POST /v1/chat/completions (stream and not) and GET /v1/models.

The official `openai` client works unchanged with base_url=http://host/v1. Errors use
OpenAI's shape {"error": {"message", "type", "param", "code"}} with TokenFlow's codes.
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
from routing.serializers import ChatCompletionRequestSerializer
from routing.services.generation import GenerationRequest, StreamEvent, generation_acreate
from tokenflow_site.endpoints import api_endpoint
from tokenflow_site.errors import ApiError, openai_error_response

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


class ChatCompletionMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_blank=True)


class ChatCompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatCompletionMessageSerializer()
    finish_reason = serializers.CharField()


class ChatCompletionUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionSerializer(serializers.Serializer):
    """Documentation of the non-streaming response (OpenAI's chat.completion)."""

    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatCompletionChoiceSerializer(many=True)
    usage = ChatCompletionUsageSerializer()


class ChatCompletionChunkEventSerializer(serializers.Serializer):
    """One server-sent event of `stream: true`: a `data:` line, no event name."""

    data = serializers.CharField(
        help_text="A JSON `chat.completion.chunk`, a JSON usage chunk, a JSON "
        '`{"error": {...}}` (failure after the stream started), or the final `[DONE]`.'
    )


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField()
    data = OpenAIModelSerializer(many=True)


def _chunk(gen_id: str, model: str, created: int, delta: dict, finish=None, usage=None) -> dict:
    body: dict[str, Any] = {
        "id": gen_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        if delta is not None
        else [],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _sse(data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def _stream_body(events, *, model: str, include_usage: bool):
    created, gen_id, first = int(time.time()), "chatcmpl-0", True
    async with aclosing(events):
        async for event in events:
            if event.type == "metadata":
                gen_id = f"chatcmpl-{event.data['generation_id']}"
            elif event.type == "text":
                delta = {"content": event.data["text"]}
                if first:
                    delta, first = {"role": "assistant", **delta}, False
                yield _sse(_chunk(gen_id, model, created, delta))
            elif event.type == "end":
                yield _sse(_chunk(gen_id, model, created, {}, event.data["finish_reason"]))
                if include_usage:
                    yield _sse(_chunk(gen_id, model, created, None, usage=event.data["usage"]))
                yield _sse("[DONE]")
            elif event.type == "error":
                data = event.data
                yield _sse(
                    {
                        "error": {
                            "message": data["message"],
                            "type": "api_error",
                            "param": None,
                            "code": data["code"],
                        }
                    }
                )


async def _complete(events, *, model: str) -> JsonResponse:
    text: list[str] = []
    end: StreamEvent | None = None
    gen_id = "chatcmpl-0"
    async with aclosing(events):
        async for event in events:
            if event.type == "metadata":
                gen_id = f"chatcmpl-{event.data['generation_id']}"
            elif event.type == "text":
                text.append(event.data["text"])
            elif event.type == "end":
                end = event
            elif event.type == "error":
                data = event.data
                return openai_error_response(
                    ApiError(
                        data["message"],
                        code=data["code"],
                        status=data.get("status") or 502,
                        retry_after=data.get("retry_after"),
                    )
                )
    assert end is not None
    return JsonResponse(
        {
            "id": gen_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(text)},
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
            ChatCompletionChunkEventSerializer,
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
    """OpenAI's chat completions; `model: "auto"` classifies and routes. Errors use OpenAI's
    shape `{"error": {"message", "type", "param", "code"}}`."""
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
        response = StreamingHttpResponse(
            _stream_body(events, model=model, include_usage=data.extra["include_usage"]),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    for name, value in prepared.headers.items():
        response[name] = value
    return response


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
