"""POST /api/generate: SSE (default) or NDJSON over the one generation event stream."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from routing.models import Prompt
from routing.services.generation import generation_acreate
from routing.streaming import event_stream_response, wants_ndjson
from tokenflow_site.errors import ApiError, error_response, parse_json_body


@csrf_exempt  # API-key clients (the middleware authenticates /api/); no cookie-based form posts
@require_POST
async def generate(request: HttpRequest) -> HttpResponse:
    """Validate, persist a queued Generation, then stream it; errors before the stream are JSON."""
    try:
        data = parse_json_body(request)
        prepared = await generation_acreate(
            data=data,
            api_key=request.api_key,
            transport="ndjson" if wants_ndjson(request) else "sse",
            source=Prompt.Source.API,
        )
    except ApiError as exc:
        return error_response(exc)
    return event_stream_response(
        prepared.events(),
        ndjson=wants_ndjson(request),
        headers={"X-Generation-Id": str(prepared.generation.pk), **prepared.headers},
    )
