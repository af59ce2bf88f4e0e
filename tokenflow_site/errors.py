"""One JSON error shape for every failure: {"error": {"code", "message", "field"?}}.

/v1/ (the OpenAI-compatible surface) renders the same ApiError in OpenAI's shape
{"error": {"message", "type", "param", "code"}}, whoever raises it (the front door's 401,
a 404 route, a serializer), so OpenAI clients always find the fields they parse."""

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.response import Response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/", "/healthz", "/metrics")
OPENAI_PREFIX = "/v1/"
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code.")
    message = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The request field at fault.")


class ErrorSerializer(serializers.Serializer):
    """The one error shape (documentation; the `Error` component)."""

    error = ErrorDetailSerializer()


class ApiError(Exception):
    """A client-visible error with an HTTP status; raised by services, rendered by transports."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        status: int = 400,
        field: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.field = field
        self.retry_after = retry_after
        self.extra = extra or {}

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return {"error": body}


def json_error(
    message: str,
    *,
    code: str,
    status: int,
    field: str | None = None,
    retry_after: float | None = None,
    request: HttpRequest | None = None,
) -> JsonResponse:
    error = ApiError(message, code=code, status=status, field=field, retry_after=retry_after)
    return error_response(error) if request is None else error_response_for(request, error)


def _with_retry_after(response: HttpResponse, retry_after: float | None) -> HttpResponse:
    if retry_after is not None:
        response["Retry-After"] = str(max(1, int(round(retry_after + 0.499))))
    return response


def error_response(error: ApiError) -> JsonResponse:
    return _with_retry_after(JsonResponse(error.payload(), status=error.status), error.retry_after)


def openai_error_payload(error: ApiError) -> dict[str, Any]:
    status = error.status
    default = "api_error" if status >= 500 else "invalid_request_error"
    return {
        "error": {
            "message": error.message,
            "type": OPENAI_ERROR_TYPES.get(status, default),
            "param": error.field,
            "code": error.code,
        }
    }


def openai_error_response(error: ApiError) -> JsonResponse:
    """The ApiError in OpenAI's error shape (the /v1/ routes)."""
    response = JsonResponse(openai_error_payload(error), status=error.status)
    return _with_retry_after(response, error.retry_after)


def error_response_for(request: HttpRequest, error: ApiError) -> JsonResponse:
    """The error in the shape the route documents: OpenAI's on /v1/, ours elsewhere."""
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error_response(error)
    return error_response(error)


# Seconds a client is told to wait when the database cannot be reached.
DATABASE_RETRY_AFTER = 5


def database_unavailable(exc: BaseException) -> ApiError | None:
    """The 503 for an exception that means the database cannot be reached (connection
    refused, reset or closed), else None. Never a 500: the client should retry."""
    from django.db import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    logger.warning("Database unavailable: %s", exc)
    return ApiError(
        "The database is unavailable; retry shortly.",
        code="database_unavailable",
        status=503,
        retry_after=DATABASE_RETRY_AFTER,
    )


_DRF_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "input_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

# One error code per kind of mistake, whichever field or serializer made it.
_VALIDATION_CODES = {
    "required": "required",
    "null": "required",
    "blank": "empty",
    "empty": "empty",
    "invalid": "invalid_type",  # DRF's own fields: "A valid integer is required." etc.
    "invalid_value": "invalid",  # our rules: the type is right, the value is not
    "invalid_type": "invalid_type",
    "not_a_list": "invalid_type",
    "not_a_dict": "invalid_type",
    "max_value": "out_of_range",
    "min_value": "out_of_range",
    "max_length": "too_long",
    "max_string_length": "too_long",
    "min_length": "too_short",
    "invalid_choice": "invalid_choice",
    "null_characters_not_allowed": "invalid_type",
    "surrogate_characters_not_allowed": "invalid_type",
}


def _first_error(detail: Any, path: str = "") -> tuple[str, Any]:
    """(dotted field path, first ErrorDetail) of a nested DRF error structure."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # ListField / DictField children: positional
                return _first_error(value, f"{path}[{key}]")
            name = "" if key == "non_field_errors" else str(key)
            return _first_error(value, f"{path}.{name}" if path and name else path or name)
        return path, "Invalid input."
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if value in ({}, [], None):
                continue  # ListField errors are positional; skip the valid items
            nested = isinstance(value, dict | list)
            return _first_error(value, f"{path}[{index}]" if nested and path else path)
        return path, "Invalid input."
    return path, detail


def validation_error_to_api_error(exc: drf_exceptions.ValidationError) -> ApiError:
    """A DRF ValidationError as the one error shape: the first problem, its field, its code."""
    field, detail = _first_error(exc.detail)
    raw_code = getattr(detail, "code", None) or "invalid"
    code = _VALIDATION_CODES.get(raw_code, raw_code if raw_code.islower() else "invalid")
    top = field.split("[")[0] if field else None  # "compress.ratio", "messages"
    message = f"{field}: {detail}" if field else str(detail)
    return ApiError(message, code=code, field=top or None)


def drf_exception_handler(exc: Exception, context: dict) -> Response | None:
    """Render DRF and service errors in the one JSON error shape."""
    if isinstance(exc, drf_exceptions.ValidationError):
        exc = validation_error_to_api_error(exc)
    if isinstance(exc, ApiError):
        response = Response(exc.payload(), status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(max(1, int(round(exc.retry_after + 0.499))))
        return response
    # DRF's views module reads REST_FRAMEWORK (which names this module): import it late.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None:
        return None
    code = _DRF_CODES.get(response.status_code, "error")
    if isinstance(exc, drf_exceptions.ParseError):
        code = "invalid_json"
    detail = getattr(exc, "detail", str(exc))
    message = str(detail[0] if isinstance(detail, list) and detail else detail)
    response.data = {"error": {"code": code, "message": message}}
    return response


class JsonErrorMiddleware(MiddlewareMixin):
    """404/405/500 on API paths become JSON, never HTML (even with DEBUG on)."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not self._is_api(request) or response.get("Content-Type", "").startswith(
            ("application/json", "text/event-stream", "application/x-ndjson", "application/jsonl")
        ):
            return response
        if response.status_code == 404:
            return json_error(
                f"No route for {request.path}.", code="not_found", status=404, request=request
            )
        if response.status_code == 405:
            return json_error(
                f"Method {request.method} is not allowed on {request.path}.",
                code="method_not_allowed",
                status=405,
                request=request,
            )
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, ApiError):
            return error_response_for(request, exception)
        if not self._is_api(request):
            return None
        unavailable = database_unavailable(exception)
        if unavailable is not None:
            return error_response(unavailable)
        logger.exception("Unhandled error on %s", request.path, exc_info=exception)
        return json_error(
            "Internal server error.", code="internal_error", status=500, request=request
        )

    @staticmethod
    def _is_api(request: HttpRequest) -> bool:
        return not request.path.startswith(("/admin/", "/static/"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error(
        f"No route for {request.path}.", code="not_found", status=404, request=request
    )


def handler500(request: HttpRequest) -> JsonResponse:
    return json_error("Internal server error.", code="internal_error", status=500, request=request)
