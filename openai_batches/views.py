"""HTTP transport of the OpenAI Files and Batch API: DRF views that parse, call a service or
selector, and render OpenAI's objects. Errors use OpenAI's shape
{"error": {"message", "type", "param", "code"}}."""

from django.conf import settings
from django.http import FileResponse, HttpRequest
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from openai_batches import selectors, services
from openai_batches.serializers import (
    BatchListQuerySerializer,
    BatchObjectSerializer,
    FileDeletedSerializer,
    FileListQuerySerializer,
    FileObjectSerializer,
    FileUploadSerializer,
    OpenAIBatchCreateSerializer,
    PageSerializer,
)
from openai_batches.uploads import DiskUploadHandler, StoredUpload, stored_from, too_large
from tokenflow_site.api import validate
from tokenflow_site.endpoints import query_validate
from tokenflow_site.errors import ApiError, drf_exception_handler

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def openai_exception_handler(exc, context):
    """TokenFlow's error, reshaped as OpenAI's {"error": {message, type, param, code}}."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        error = response.data["error"]
        status = response.status_code
        response.data = {
            "error": {
                "message": error.get("message", ""),
                "type": ERROR_TYPES.get(
                    status, "api_error" if status >= 500 else "invalid_request_error"
                ),
                "param": error.get("field"),
                "code": error.get("code"),
            }
        }
    return response


class OpenAIView(APIView):
    def get_exception_handler(self):
        return openai_exception_handler


def _page(rows, has_more: bool, render) -> dict:
    data = [render(row) for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _page_of(item):
    return inline_serializer(
        name=f"{item.__name__.removesuffix('Serializer')}Page",
        fields={"data": item(many=True), **PageSerializer().get_fields()},
    )


class FileCollection(OpenAIView):
    """POST: upload a batch input (multipart `file` + `purpose=batch`), streamed to disk
    within TOKENFLOW_MAX_UPLOAD_BYTES. GET: the caller's files, newest first."""

    parser_classes = [MultiPartParser]
    query_serializer = {"GET": FileListQuerySerializer}

    def _upload(self, request) -> StoredUpload:
        django_request: HttpRequest = request._request
        length = request.META.get("CONTENT_LENGTH") or "0"
        length = int(length) if length.isdigit() else 0
        if length > settings.TOKENFLOW_MAX_UPLOAD_BYTES + 65_536:  # form fields' allowance
            raise too_large(length)
        if not hasattr(django_request, "_files"):  # not parsed yet: stream to our handler
            django_request.upload_handlers = [DiskUploadHandler(django_request)]
        upload = request.FILES.get("file")
        if upload is None:
            raise ApiError("Upload the JSONL as the multipart 'file' field.", field="file")
        return stored_from(upload)

    @extend_schema(
        request={"multipart/form-data": FileUploadSerializer},
        responses={200: FileObjectSerializer, 413: OpenApiResponse(description="Too large.")},
        summary="OpenAI-compatible file upload (purpose batch)",
    )
    def post(self, request):
        upload = self._upload(request)
        try:
            data = validate(FileUploadSerializer, {"purpose": request.data.get("purpose")})
            file = services.file_create(
                upload=upload, purpose=data["purpose"], principal=request.auth
            )
        except BaseException:
            upload.discard()
            raise
        return Response(selectors.file_object(file))

    @extend_schema(
        parameters=[FileListQuerySerializer],
        responses={200: _page_of(FileObjectSerializer)},
        summary="OpenAI-compatible file list",
        operation_id="v1_files_list",
    )
    def get(self, request):
        query = query_validate(FileListQuerySerializer, request)
        files = selectors.file_list(principal=request.auth, purpose=query.get("purpose"))
        rows, more = selectors.page(
            files, limit=query["limit"], after=query.get("after"), prefix="file-", name="File"
        )
        return Response(_page(rows, more, selectors.file_object))


class FileDetail(OpenAIView):
    @extend_schema(responses={200: FileObjectSerializer}, summary="OpenAI-compatible file")
    def get(self, request, file_id: str):
        return Response(
            selectors.file_object(selectors.file_get(principal=request.auth, file_id=file_id))
        )

    @extend_schema(responses={200: FileDeletedSerializer}, summary="Delete a file")
    def delete(self, request, file_id: str):
        file = selectors.file_get(principal=request.auth, file_id=file_id)
        public_id = file.public_id
        services.file_delete(file=file)
        return Response({"id": public_id, "object": "file", "deleted": True})


class FileContent(OpenAIView):
    def perform_content_negotiation(self, request, force=False):
        # The bytes are served whatever the client accepts (the SDK sends
        # application/binary); errors are still JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiResponse(description="The bytes.")},
        summary="OpenAI-compatible file content",
    )
    def get(self, request, file_id: str):
        file = selectors.file_get(principal=request.auth, file_id=file_id)
        path = selectors.file_path(file)
        if not path.is_file():
            raise ApiError(f"File {file.public_id} is gone from disk.", code="gone", status=410)
        response = FileResponse(path.open("rb"), content_type="application/octet-stream")
        response["Content-Length"] = str(path.stat().st_size)
        return response


class BatchCollection(OpenAIView):
    """POST: a batch from an uploaded JSONL file (run by the batch workers). GET: the
    caller's batches, newest first."""

    query_serializer = {"GET": BatchListQuerySerializer}

    @extend_schema(
        request=OpenAIBatchCreateSerializer,
        responses={200: BatchObjectSerializer},
        summary="OpenAI-compatible batch create",
    )
    def post(self, request):
        data = validate(OpenAIBatchCreateSerializer, request.data)
        batch = services.openai_batch_create(principal=request.auth, **data)
        return Response(selectors.batch_object(batch))

    @extend_schema(
        parameters=[BatchListQuerySerializer],
        responses={200: _page_of(BatchObjectSerializer)},
        summary="OpenAI-compatible batch list",
        operation_id="v1_batches_list",
    )
    def get(self, request):
        query = query_validate(BatchListQuerySerializer, request)
        rows, more = selectors.page(
            selectors.batch_list(principal=request.auth),
            limit=query["limit"],
            after=query.get("after"),
            prefix="batch_",
            name="Batch",
        )
        rows = [services.openai_batch_finalize(batch=row) for row in rows]
        return Response(_page(rows, more, selectors.batch_object))


class BatchDetail(OpenAIView):
    @extend_schema(
        responses={200: BatchObjectSerializer},
        summary="OpenAI-compatible batch (output files produced once it is finished)",
    )
    def get(self, request, batch_id: str):
        batch = selectors.batch_get(principal=request.auth, batch_id=batch_id)
        batch = services.openai_batch_finalize(batch=batch)
        return Response(selectors.batch_object(batch))


class BatchCancel(OpenAIView):
    @extend_schema(
        request=None,
        responses={200: BatchObjectSerializer, 409: OpenApiResponse(description="Finished.")},
        summary="OpenAI-compatible batch cancel",
    )
    def post(self, request, batch_id: str):
        batch = selectors.batch_get(principal=request.auth, batch_id=batch_id)
        batch = services.openai_batch_cancel(batch=batch)
        batch = services.openai_batch_finalize(batch=batch)
        return Response(selectors.batch_object(batch))
