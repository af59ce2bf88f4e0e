"""HTTP transport for batch jobs: validate (batches.serializers), authorize (accounts.
permissions: a key's own jobs, every job for staff), call a service or selector, render."""

import json
from typing import Any

from django.http import QueryDict, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import owned_by, owned_get, request_principal
from batches import selectors, services
from batches.jsonl import (
    JSONL,
    JSONL_PARSERS,
    JSONL_TYPES,
    IgnoreAcceptNegotiation,
    JsonLines,
    UploadCapHandler,
    content_length_check,
)
from batches.models import BatchItem, BatchJob
from batches.serializers import (
    BatchCreateSerializer,
    BatchErrorSerializer,
    BatchItemSerializer,
    BatchJobSerializer,
    BatchJobSummarySerializer,
    BatchUploadSerializer,
    ItemsQuerySerializer,
    JobFormOptionsSerializer,
    PauseSerializer,
    ResultsQuerySerializer,
)
from tokenflow_site.api import AnyContentJSONParser, BoundedLimitOffsetPagination

# --- OpenAPI -----------------------------------------------------------------------------

ERRORS = {
    400: "Invalid request; `field` names the culprit (and `line` or `index` an input item).",
    401: "No API key, or an invalid or revoked one.",
    403: "A session that is not staff, a failed CSRF check (staff session, unsafe method) "
    "or an inactive key owner.",
    404: "No such job, or another key's job (the same answer).",
    409: "The job's status does not allow this transition (`status` says which it is).",
    413: "Too many items (TOKENFLOW_BATCH_MAX_ITEMS; `line` or `index` names the first one "
    "beyond), a body beyond TOKENFLOW_MAX_UPLOAD_BYTES (checked from Content-Length before "
    "reading), or a prompt_template / rendered prompt beyond its cap.",
    429: "The API key's rate limit (see Retry-After and X-RateLimit-*), or "
    "`too_many_active_jobs` (the key's cap on unfinished batch jobs).",
}


def errors(*statuses: int, **descriptions: str) -> dict[Any, OpenApiResponse]:
    """The error responses of an operation, in the one error shape (401/403/429 always:
    the front door answers them on every route). `descriptions`: `e404="..."` overrides."""
    return {
        status: OpenApiResponse(
            BatchErrorSerializer, description=descriptions.get(f"e{status}", ERRORS[status])
        )
        for status in sorted({*statuses, 401, 403, 429})
    }


OPTIONS_IN_QUERY = (
    "With a JSONL body the options travel in the query string: name, model, "
    "prompt_template, handler, concurrency, max_attempts, and parameters / retry_policy "
    "as JSON objects."
)


# --- views -------------------------------------------------------------------------------


class BatchPagination(BoundedLimitOffsetPagination):
    """limit/offset pages as `{"object": "list", "total", "limit", "offset", "data"}`."""

    def get_paginated_response(self, data) -> Response:
        return Response(
            {
                "object": "list",
                "total": self.count,
                "limit": self.limit,
                "offset": self.offset,
                "data": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict) -> dict:
        return {
            "type": "object",
            "required": ["object", "total", "limit", "offset", "data"],
            "properties": {
                "object": {"type": "string", "description": 'Always "list".'},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
                "data": schema,
            },
        }


class JobView(APIView):
    """A view of one job: `get_job` is the caller's job or the same 404 as a missing one."""

    def get_job(self) -> BatchJob:
        return owned_get(
            BatchJob.objects.all(),
            request_principal(self.request),
            pk=self.kwargs["job_id"],
            name="Batch job",
        )


MULTIPART_SLACK = 1024 * 1024  # the form fields and boundaries around a multipart `file`


def _body_size_check(request: Request) -> None:
    """Refuse an oversized body from its Content-Length before reading it, and cap what is
    read while a multipart upload streams in (a chunked body declares no length)."""
    multipart = request.content_type.startswith("multipart/")
    field = "file" if multipart else "body"
    content_length_check(request.META, field=field, slack=MULTIPART_SLACK if multipart else 0)
    if multipart:
        django_request = request._request
        django_request.upload_handlers = [
            UploadCapHandler(django_request),
            *django_request.upload_handlers,
        ]


def _create_input(request: Request) -> tuple[dict[str, Any], list, str]:
    """(options, [(line or None, raw item)], label) from whichever body the parsers read:
    JsonLines (options in the query string), a multipart form, or a JSON object."""
    context = {"principal": request_principal(request)}
    _body_size_check(request)
    body = request.data
    if isinstance(body, JsonLines):
        serializer = JobFormOptionsSerializer(data=request.query_params, context=context)
        serializer.is_valid(raise_exception=True)
        return serializer.options, body, "line"
    if isinstance(body, QueryDict):  # multipart/form-data
        serializer = BatchUploadSerializer(data=body, context=context)
        serializer.is_valid(raise_exception=True)
        return serializer.options, serializer.validated_data["file"], "line"
    serializer = BatchCreateSerializer(data=body, context=context)
    serializer.is_valid(raise_exception=True)
    items = serializer.validated_data["items"]
    return serializer.options, [(None, item) for item in items], "items"


class BatchCollection(generics.ListAPIView):
    """GET: the caller's jobs, newest first. POST: create a job from JSON, JSONL or an upload."""

    serializer_class = BatchJobSummarySerializer
    pagination_class = BatchPagination
    parser_classes = [*JSONL_PARSERS, MultiPartParser, AnyContentJSONParser]
    query_serializer = {"POST": JobFormOptionsSerializer}  # a JSONL body's job options

    def get_queryset(self):
        jobs = BatchJob.objects.order_by("-created_at", "-id")
        return owned_by(jobs, request_principal(self.request))

    @extend_schema(
        summary="List batch jobs",
        description="A key's own jobs (a staff session sees all), without statistics.",
        responses={200: BatchJobSummarySerializer(many=True), **errors(400)},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Create a batch job",
        description=(
            "Items in the OpenAI Batch input format, as a JSON body (`items`, with or "
            "without a JSON Content-Type), a JSONL body (Content-Type "
            f"{', '.join(JSONL_TYPES)}) or a multipart upload (`file`). {OPTIONS_IN_QUERY} "
            "Every item is validated before anything is stored."
        ),
        request={
            "application/json": BatchCreateSerializer,
            **{media_type: {"type": "string"} for media_type in JSONL_TYPES},
            "multipart/form-data": BatchUploadSerializer,
        },
        parameters=[JobFormOptionsSerializer],
        responses={
            201: BatchJobSerializer,
            **errors(
                400,
                404,
                413,
                e403=f"{ERRORS[403][:-1]}, or a `handler` outside TOKENFLOW_BATCH_HANDLERS.",
                e404="An item or the job names a model that does not exist.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        options, items, label = _create_input(request)
        job = services.batch_create(
            items=items, api_key=request_principal(request).api_key, line_label=label, **options
        )
        return Response(BatchJobSerializer(job).data, status=201)


class BatchDetail(JobView):
    """A job with its live statistics: counts, throughput, ETA, tokens, latency, errors."""

    @extend_schema(
        summary="A batch job with its statistics",
        responses={200: BatchJobSerializer, **errors(404)},
    )
    def get(self, request: Request, job_id: int) -> Response:
        return Response(BatchJobSerializer(self.get_job()).data)


class BatchPause(JobView):
    """`mode` in the query string or the JSON body: soft (default) lets in-flight items
    finish, hard returns them to pending at once (no attempt counted)."""

    # A bodiless POST from a form or a test client arrives as an empty multipart body.
    parser_classes = [MultiPartParser, AnyContentJSONParser]
    query_serializer = PauseSerializer

    @extend_schema(
        summary="Pause a batch job",
        request={"application/json": PauseSerializer},
        parameters=[PauseSerializer],
        responses={200: BatchJobSerializer, **errors(400, 404, 409)},
    )
    def post(self, request: Request, job_id: int) -> Response:
        job = self.get_job()
        source = request.query_params if "mode" in request.query_params else request.data
        serializer = PauseSerializer(data=source)
        serializer.is_valid(raise_exception=True)
        job = services.batch_pause(job=job, mode=serializer.validated_data["mode"])
        return Response(BatchJobSerializer(job).data)


class BatchResume(JobView):
    """A paused, pausing or failed job runs again."""

    @extend_schema(
        summary="Resume a paused (or failed) batch job",
        request=None,
        responses={200: BatchJobSerializer, **errors(404, 409)},
    )
    def post(self, request: Request, job_id: int) -> Response:
        job = services.batch_resume(job=self.get_job())
        return Response(BatchJobSerializer(job).data)


class BatchCancel(JobView):
    """The job and every item not finished yet are cancelled; finished results stay."""

    @extend_schema(
        summary="Cancel a batch job and its unfinished items",
        request=None,
        responses={200: BatchJobSerializer, **errors(404, 409)},
    )
    def post(self, request: Request, job_id: int) -> Response:
        job = services.batch_cancel(job=self.get_job())
        return Response(BatchJobSerializer(job).data)


RESULT_LINE_EXAMPLE = {
    "id": "batch_req_7",
    "custom_id": "q-1",
    "response": {
        "status_code": 200,
        "request_id": "req_7_1",
        "body": {
            "id": "chatcmpl-batch-7",
            "object": "chat.completion",
            "created": 1735689600,
            "model": "mock/echo",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Echo: hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        },
    },
    "error": None,
}


class BatchResults(JobView):
    """Finished items, one JSON object per line, in id order: completed and failed by
    default, or only `?status=` ones (cancelled included)."""

    # Always JSONL on success and JSON for errors, whatever the client's Accept says.
    content_negotiation_class = IgnoreAcceptNegotiation
    query_serializer = ResultsQuerySerializer

    @extend_schema(
        summary="Results as JSONL (OpenAI Batch output format, streamed)",
        parameters=[ResultsQuerySerializer],
        responses={
            (200, JSONL): OpenApiResponse(
                OpenApiTypes.STR,
                description="One JSON object per line: {id, custom_id, response: "
                "{status_code, request_id, body: chat.completion} | null, "
                "error: {code, message} | null}.",
                examples=[
                    OpenApiExample(
                        "A completed item",
                        value=json.dumps(RESULT_LINE_EXAMPLE) + "\n",
                        media_type=JSONL,
                    )
                ],
            ),
            **{
                (status, "application/json"): response
                for status, response in errors(400, 404).items()
            },
        },
    )
    def get(self, request: Request, job_id: int) -> StreamingHttpResponse:
        job = self.get_job()
        query = ResultsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        lines = selectors.batch_result_lines(job=job, status=query.validated_data.get("status"))
        response = StreamingHttpResponse(lines, content_type=JSONL)
        response["Content-Disposition"] = f'attachment; filename="batch_{job.pk}_output.jsonl"'
        response["X-Accel-Buffering"] = "no"
        response["Cache-Control"] = "no-cache"
        return response


class BatchItemList(JobView, generics.ListAPIView):
    """Items with their attempt trajectories, `?status=` filtered, limit/offset paged."""

    queryset = BatchItem.objects.none()  # the schema's model; get_queryset scopes to the job
    serializer_class = BatchItemSerializer
    pagination_class = BatchPagination
    query_serializer = ItemsQuerySerializer

    def get_queryset(self):
        job = self.get_job()
        query = ItemsQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.batch_item_list(job=job, status=query.validated_data.get("status"))

    @extend_schema(
        summary="A batch job's items with their attempt trajectories",
        parameters=[ItemsQuerySerializer],
        responses={200: BatchItemSerializer(many=True), **errors(400, 404)},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)
