"""`api_endpoint`: the front door for async (streaming) views.

DRF views are sync, so SSE, NDJSON and /v1 views are plain Django async views. This
decorator gives them the same steps in the same order as a DRF view (method, Principal,
JSON body, serializer) before anything streams, and publishes them in the OpenAPI schema
through a documentation-only APIView class.
"""

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from accounts.permissions import request_principal
from tokenflow_site.api import json_object, validate
from tokenflow_site.errors import ApiError, error_response

# --- async views -------------------------------------------------------------------------

ErrorRenderer = Callable[[ApiError], HttpResponse]


def method_not_allowed(request: HttpRequest, methods: Sequence[str]) -> ApiError:
    return ApiError(
        f"Method {request.method} is not allowed on {request.path}.",
        code="method_not_allowed",
        status=405,
        extra={"allowed": list(methods)},
    )


def api_endpoint(
    serializer_class: type[serializers.Serializer] | None = None,
    *,
    methods: Sequence[str] = ("POST",),
    query: type[serializers.Serializer] | None = None,
    render_error: ErrorRenderer = error_response,
    **schema: Any,
):
    """Decorate `async def view(request, data, **kwargs)`: check the method and the
    Principal, validate the query string with `query` (the result is `request.query`) and
    the JSON body (any Content-Type) with `serializer_class`, all before the view (and its
    stream) starts. `schema` goes to drf-spectacular's `extend_schema` (responses,
    summary, ...); `query` is documented as the query parameters."""

    def decorate(view):
        @csrf_exempt  # CSRF is enforced for sessions by the front door (accounts.middleware)
        @wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise method_not_allowed(request, methods)
                request_principal(request)
                query_unknown_check(request, query_serializer_fields(query))
                request.query = query_validate(query, request) if query is not None else {}
                data = None
                if serializer_class is not None:
                    data = validate(serializer_class, json_object(request.body), request=request)
            except ApiError as exc:
                response = render_error(exc)
                if exc.status == 405:
                    response["Allow"] = ", ".join(methods)
                return response
            return await view(request, data, *args, **kwargs)

        # drf-spectacular documents APIView classes only: give it one that describes this
        # view (never instantiated for a request).
        if query is not None:
            schema["parameters"] = [query, *schema.get("parameters", [])]
        handlers = {
            method.lower(): extend_schema(request=serializer_class, **schema)(
                lambda self, request, *args, **kwargs: None
            )
            for method in methods
        }
        wrapper.cls = type(f"{view.__name__}_schema", (APIView,), handlers)
        wrapper.initkwargs = {}
        return wrapper

    return decorate


# Query parameters every endpoint understands: DRF's format override.
ALWAYS_ALLOWED_QUERY = frozenset({"format"})


def query_unknown_check(request, allowed: set[str] | frozenset[str]) -> None:
    """400 `unknown_parameter` for a query parameter the endpoint does not define: a typo
    (`?limt=5`) must not be silently ignored."""
    params = getattr(request, "query_params", None)
    if params is None:
        params = request.GET
    unknown = sorted(set(params) - set(allowed) - ALWAYS_ALLOWED_QUERY)
    if unknown:
        names = ", ".join(sorted(set(allowed))) or "none"
        raise ApiError(
            f"Unknown query parameter {unknown[0]!r}; this endpoint takes: {names}.",
            code="unknown_parameter",
            field=unknown[0][:100],
        )


def query_serializer_fields(serializer_class: type[serializers.Serializer] | None) -> set[str]:
    return set(serializer_class().fields) if serializer_class is not None else set()


def query_validate(serializer_class: type[serializers.Serializer], request) -> dict:
    """Validated query parameters (DRF Request or HttpRequest). A plain dict (the last value
    of each name), not the QueryDict: DRF reads an empty form value as "not sent", while an
    API filter such as `?engine=` is a blank value, which fails validation (400)."""
    params = getattr(request, "query_params", None)
    if params is None:
        params = request.GET
    return validate(serializer_class, {name: params[name] for name in params})
