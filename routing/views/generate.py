"""POST /api/generate and POST /api/models/select: SSE (default) or NDJSON over the one
generation event stream. /api/models/select is /api/generate with model "auto"."""

from django.http import HttpRequest, HttpResponse

from routing.models import Prompt
from routing.serializers import GenerateRequestSerializer, SelectRequestSerializer
from routing.services.generation import GenerationRequest, generation_acreate
from routing.streaming import (
    STREAM_PARAMETERS,
    STREAM_RESPONSES,
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
    parameters=STREAM_PARAMETERS,
    summary="Stream a generation (SSE or NDJSON)",
)
async def generate(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Generate from `prompt` or `messages` with a model name or "auto" (classify, route,
    fall back). SSE by default; NDJSON with `?format=ndjson` or `Accept: application/x-ndjson`."""
    return await _stream(request, data)


@api_endpoint(
    SelectRequestSerializer,
    responses=STREAM_RESPONSES,
    parameters=STREAM_PARAMETERS,
    summary="Classify, route and stream (model auto)",
)
async def models_select(request: HttpRequest, data: GenerationRequest) -> HttpResponse:
    """Classify the prompt, pick the model from the routing table and stream its answer:
    exactly /api/generate with model "auto" (same events, same metadata)."""
    return await _stream(request, data)
