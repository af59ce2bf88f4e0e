"""HTTP transport for fan-out: POST /api/process streams, GET /api/process/<id> reads back."""

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from pipelines.services import process_events, process_parse, process_start, run_detail, run_get
from routing.streaming import event_stream_response, wants_ndjson
from tokenflow_site.errors import ApiError, error_response, parse_json_body


def _start(request: HttpRequest):
    request_data = process_parse(parse_json_body(request))
    return process_start(request=request_data, api_key=request.api_key, transport="process")


@csrf_exempt
@require_POST
async def process_view(request: HttpRequest) -> HttpResponse:
    """Fan out to the pipeline's agents and stream the aggregated answer (SSE or NDJSON)."""
    try:
        start = await sync_to_async(_start)(request)
    except ApiError as exc:
        return error_response(exc)
    headers = {"X-TokenFlow-Run-Id": str(start.run.pk)}
    if start.replay:
        headers["X-TokenFlow-Replayed"] = "true"
    return event_stream_response(
        process_events(start), ndjson=wants_ndjson(request), headers=headers
    )


@require_GET
def run_view(request: HttpRequest, run_id: int) -> JsonResponse:
    """A run with its agents' and aggregator's generations."""
    staff = request.api_key is None and request.user.is_authenticated and request.user.is_staff
    try:
        run = run_get(run_id=run_id, api_key=request.api_key, staff=staff)
    except ApiError as exc:
        return error_response(exc)
    return JsonResponse(run_detail(run))
