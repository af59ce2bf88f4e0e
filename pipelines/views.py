"""HTTP transport for fan-out: POST /api/process streams, GET /api/process/<id> reads back."""

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.generics import RetrieveAPIView

from accounts.permissions import request_principal
from pipelines.models import PipelineRun
from pipelines.selectors import run_get
from pipelines.serializers import ProcessRequestSerializer, RunSerializer
from pipelines.services import ProcessRequest, process_events, process_start
from routing.streaming import event_stream_response, wants_ndjson
from tokenflow_site.endpoints import api_endpoint
from tokenflow_site.errors import ApiError, ErrorSerializer, error_response

PROCESS = """
Validates the body, then streams the run as Server-Sent Events (default) or NDJSON
(`?format=ndjson` or `Accept: application/x-ndjson`); the events are described under the
200 response. Errors found before the stream starts are JSON (the 4xx responses). A
repeated `message_id` of a finished run replays the stored run as the same stream
(nothing runs again).
"""

PROCESS_EVENTS = """
Headers: `X-TokenFlow-Run-Id`; `X-TokenFlow-Replayed: true` on a replay.

SSE events, in order (`event: <name>` + `data: <json object>`):

- `metadata`: `run_id, message_id, pipeline, conversation_id,
  agents: [{name, model, generation_id}], aggregator, replayed`.
- `agent_done` (as each agent finishes): `agent, model, generation_id, duration_ms, text`.
- `agent_failed`: `agent, model, generation_id, duration_ms, code, reason`; codes
  `timeout`, `deadline_exceeded`, `model_disabled`, `empty_answer` or the provider's.
- `info`: fallback or queue information about the aggregator (passed through).
- `text_chunk`: `{"text": "..."}`, a piece of the aggregated answer.
- `end_stream`: `generation_id` (the aggregator's), `finish_reason`,
  `usage: {prompt_tokens, completion_tokens, total_tokens}`, `run_id, status, missing,
  agents_ms, ttft_ms, duration_ms`.
- `error`: `message, code, run_id`; + `failures: [{agent, code, reason}]` for
  `all_agents_failed`; + `generation_id` (and, live, `status, retry_after`) when the
  aggregator failed.

The stream ends with `end_stream` or `error`.

NDJSON (`application/x-ndjson`), Ollama-style, one JSON object a line, each with `done`:
the first line carries `metadata`, then one `{"response": "<text chunk>", "done": false}`
per piece of the aggregated answer, and a last line with `"done": true` and the
`end_stream` fields (`"response": ""`) or an `error` object. Agent and info events are
SSE-only.
"""


STREAM = OpenApiResponse(OpenApiTypes.STR, description=PROCESS_EVENTS)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


@api_endpoint(
    ProcessRequestSerializer,
    summary="Fan a message out to a pipeline's agents; stream the aggregated answer",
    description=PROCESS,
    parameters=[
        OpenApiParameter(
            "format",
            OpenApiTypes.STR,
            OpenApiParameter.QUERY,
            enum=["ndjson"],
            description="`ndjson` for NDJSON lines instead of SSE.",
        )
    ],
    responses={
        (200, "text/event-stream"): STREAM,
        (200, "application/x-ndjson"): STREAM,
        400: _error("`required`, `empty`, `invalid_type`, `too_long`, `invalid_json`."),
        401: _error("`unauthorized`: missing or invalid API key."),
        403: _error("`forbidden` (non-staff session), `csrf_failed`."),
        404: _error("`pipeline_not_found` (with `available_pipelines`)."),
        409: _error(
            "`pipeline_has_no_agents`; `run_in_progress` or `message_id_conflict` (with `run_id`)."
        ),
        413: _error("`input_too_large`: `message` over TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS."),
        429: _error("`rate_limited` (with Retry-After)."),
    },
    tags=["process"],
)
async def process_view(request: HttpRequest, data: dict) -> HttpResponse:
    """Fan out to the pipeline's agents and stream the aggregated answer (SSE or NDJSON)."""
    try:
        start = await sync_to_async(process_start)(
            request=ProcessRequest(**data), api_key=request.api_key, transport="process"
        )
    except ApiError as exc:
        return error_response(exc)
    headers = {"X-TokenFlow-Run-Id": str(start.run.pk)}
    if start.replay:
        headers["X-TokenFlow-Replayed"] = "true"
    return event_stream_response(
        process_events(start, agent_deltas=data.get("stream_agents", False)),
        ndjson=wants_ndjson(request),
        headers=headers,
    )


@extend_schema(
    summary="A run with its agents' and aggregator's generations",
    responses={
        200: RunSerializer,
        401: _error("`unauthorized`."),
        403: _error("`forbidden`."),
        404: _error("`not_found`: no such run, or another key's run."),
    },
    tags=["process"],
)
class RunDetailView(RetrieveAPIView):
    """A key reads its own runs (another key's run is a 404); staff sessions read all."""

    serializer_class = RunSerializer
    queryset = PipelineRun.objects.none()  # for the schema; get_object goes through run_get
    lookup_url_kwarg = "run_id"

    def get_object(self) -> PipelineRun:
        return run_get(principal=request_principal(self.request), run_id=self.kwargs["run_id"])
