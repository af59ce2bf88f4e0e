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
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from routing.models import ModelRanking, Prompt
from routing.services.generation import StreamEvent, generation_acreate
from tokenflow_site.errors import ApiError, parse_json_body

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    message: str,
    *,
    code: str,
    status: int,
    param: str | None = None,
    retry_after: float | None = None,
) -> JsonResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "api_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }
    response = JsonResponse(body, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(max(1, int(round(retry_after + 0.499))))
    return response


def _text_content(content: Any) -> Any:
    """OpenAI content parts [{"type": "text", "text": ...}] -> one string; others as given."""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    return content


def chat_request_parse(data: dict[str, Any]) -> dict[str, Any]:
    """Map an OpenAI chat body onto the generation service's input."""
    if data.get("n") not in (None, 1):
        raise ApiError("Only n=1 is supported.", code="unsupported", field="n")
    if "prompt" in data:
        raise ApiError("Use 'messages' on /v1/chat/completions.", field="prompt")
    if data.get("messages") is None:
        raise ApiError("'messages' is required.", code="required", field="messages")
    messages = data["messages"]
    if isinstance(messages, list):
        messages = [
            {**m, "content": _text_content(m.get("content"))} if isinstance(m, dict) else m
            for m in messages
        ]
    body = {**data, "messages": messages}
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body["max_tokens"] = body["max_completion_tokens"]
    return body


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
                return openai_error(
                    data["message"],
                    code=data["code"],
                    status=data.get("status") or 502,
                    retry_after=data.get("retry_after"),
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


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        data = chat_request_parse(parse_json_body(request))
        stream = bool(data.get("stream"))
        prepared = await generation_acreate(
            data=data, api_key=request.api_key, transport="openai", source=Prompt.Source.OPENAI
        )
    except ApiError as exc:
        return openai_error(
            exc.message,
            code=exc.code,
            status=exc.status,
            param=exc.field,
            retry_after=exc.retry_after,
        )
    events, model = prepared.events(), prepared.generation.model_name
    if not stream:
        response = await _complete(events, model=model)
    else:
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        response = StreamingHttpResponse(
            _stream_body(events, model=model, include_usage=include_usage),
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


@require_GET
async def models(request: HttpRequest) -> JsonResponse:
    return JsonResponse(await sync_to_async(_models_payload)())
