"""GET /metrics: Prometheus text format (public by default, like most exporters)."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST

from accounts.middleware import request_authorize
from routing.metrics import metrics_exposition
from tokenflow_site.errors import ApiError, error_response


def metrics(request: HttpRequest) -> HttpResponse:
    """With TOKENFLOW_METRICS_PUBLIC=0: the same rules as /api/ (an API key in any of its
    headers, or a staff session; 401 without credentials, 403 for other sessions)."""
    if not settings.TOKENFLOW_METRICS_PUBLIC:
        try:
            request_authorize(request)
        except ApiError as exc:
            return error_response(exc)
    return HttpResponse(metrics_exposition(), content_type=CONTENT_TYPE_LATEST)
