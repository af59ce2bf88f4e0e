"""POST /api/generate and POST /api/models/select: SSE (default) or NDJSON over the one
generation event stream. /api/models/select is /api/generate with model "auto"."""

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiExample

from routing.models import Prompt
from routing.serializers import GenerateRequestSerializer, SelectRequestSerializer
from routing.services.generation import GenerationRequest, generation_acreate
from routing.streaming import (
    STREAM_RESPONSES,
    StreamQuerySerializer,
    event_stream_response,
    wants_ndjson,
)
from tokenflow_site.endpoints import api_endpoint


async def _stream(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Persist a queued Generation (errors are JSON), then stream it."""
    ndjson = wants_ndjson(request)
    prepared = await generation_acreate(
        request=data,
        api_key=request.api_key,
        transport="ndjson" if ndjson else "sse",
        source=Prompt.Source.API,
    )
    return event_stream_response(
        prepared.events(),
        ndjson=ndjson,
        headers={"X-Generation-Id": str(prepared.generation.pk), **prepared.headers},
    )


@api_endpoint(
    GenerateRequestSerializer,
    responses=STREAM_RESPONSES,
    query=StreamQuerySerializer,
    summary="Stream a generation (SSE or NDJSON)",
    examples=[
        OpenApiExample(
            "Routed by the classifier",
            value={"model": "auto", "prompt": "Write a haiku about the sea.", "max_tokens": 64},
            request_only=True,
        ),
        OpenApiExample(
            "Chat messages to a named model",
            value={
                "model": "groq/llama-3.1-8b-instant",
                "messages": [
                    {"role": "system", "content": "Answer in one sentence."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
                "temperature": 0.2,
            },
            request_only=True,
        ),
    ],
)
async def generate(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Generate from `prompt` or `messages` with a model name or "auto" (classify, route,
    fall back). SSE by default; NDJSON with `?format=ndjson` or `Accept: application/x-ndjson`."""
    return await _stream(request, data)


@api_endpoint(
    SelectRequestSerializer,
    responses=STREAM_RESPONSES,
    query=StreamQuerySerializer,
    summary="Classify, route and stream (model auto)",
    examples=[
        OpenApiExample(
            "A prompt",
            value={"prompt": "Fix the bug in this Python function: def f(x): return x +"},
            request_only=True,
        )
    ],
)
async def models_select(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Classify the prompt, pick the model from the routing table and stream its answer:
    exactly /api/generate with model "auto" (same events, same metadata)."""
    return await _stream(request, data)
