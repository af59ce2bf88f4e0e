"""Staff pages. Thin: they render templates and read selectors; the pages talk to the
existing APIs (ws/generate/, /api/compress, /api/classify, ...) with the staff session and
to web.consumers (ws/dashboard/) for live data."""

from functools import wraps

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from tokenflow_site.api import validate
from tokenflow_site.errors import ApiError, error_response
from web import selectors
from web.serializers import DEFAULT_RANGE, RANGES, RangeSerializer


@require_GET
@staff_member_required
@ensure_csrf_cookie
def playground(request: HttpRequest) -> HttpResponse:
    config = {
        **selectors.playground_options(),
        "default_model": settings.TOKENFLOW_DEFAULT_MODEL,
        "default_pipeline": settings.TOKENFLOW_DEFAULT_PIPELINE,
        "max_output_tokens": settings.TOKENFLOW_MAX_OUTPUT_TOKENS,
    }
    return render(request, "web/playground.html", {"config": config, "page": "playground"})


@require_GET
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    span = request.GET.get("range")
    return render(
        request,
        "web/dashboard.html",
        {
            "page": "dashboard",
            "ranges": list(RANGES.items()),
            "range": span if span in RANGES else DEFAULT_RANGE,
        },
    )


@require_GET
@staff_member_required
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The dashboard's aggregates as JSON (the page also gets them pushed over ws/dashboard/)."""
    try:
        params = validate(RangeSerializer, request.GET)
    except ApiError as exc:
        return error_response(exc)
    stats = selectors.dashboard_stats(span=params["range"])
    return JsonResponse(stats, encoder=DjangoJSONEncoder)


def images_from_this_server(view):
    """`Content-Security-Policy: img-src 'self' data:`: Redoc's bundle always adds a
    Redocly logo from cdn.redoc.ly to its menu; the browser does not even request it."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = "img-src 'self' data:"
        return response

    return wrapped
