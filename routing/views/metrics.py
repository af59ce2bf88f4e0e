"""GET /metrics: Prometheus text format (public by default, like most exporters)."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from accounts.middleware import bearer_token
from accounts.selectors import api_key_authenticate
from tokenflow_site.errors import json_error


def metrics(request: HttpRequest) -> HttpResponse:
    """With TOKENFLOW_METRICS_PUBLIC=0: staff session or a valid API key only."""
    if not settings.TOKENFLOW_METRICS_PUBLIC:
        user = getattr(request, "user", None)
        token = bearer_token(request.headers.get("Authorization", ""))
        allowed = (user is not None and user.is_staff) or (
            token is not None and api_key_authenticate(raw=token) is not None
        )
        if not allowed:
            return json_error(
                "Metrics need a staff session or an API key.", code="forbidden", status=403
            )
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
