"""Bearer API-key auth for /api/ and /v1/ (sync and async), with JSON 401s, plus the
per-key rate limit (429 with Retry-After and X-RateLimit-* headers)."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse

from accounts.ratelimit import rate_limit_hit
from accounts.selectors import api_key_authenticate
from tokenflow_site.errors import json_error

PROTECTED_PREFIXES = ("/api/", "/v1/")
PUBLIC_PATHS = ("/api/schema/", "/api/docs/")


def bearer_token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _authenticate(request: HttpRequest) -> HttpResponse | None:
    """Set request.api_key, or return the 401 response. Staff sessions are accepted too."""
    request.api_key, request.rate_limit = None, None
    if not request.path.startswith(PROTECTED_PREFIXES) or request.path.startswith(PUBLIC_PATHS):
        return None
    header = request.headers.get("Authorization", "")
    if not header:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return None
        return json_error(
            "Missing API key: send 'Authorization: Bearer <key>'.", code="unauthorized", status=401
        )
    token = bearer_token(header)
    key = api_key_authenticate(raw=token) if token else None
    if key is None:
        return json_error("Invalid or revoked API key.", code="unauthorized", status=401)
    request.api_key = key
    return _rate_limit(request)


def _rate_limit(request: HttpRequest) -> HttpResponse | None:
    """Count the request against its key's limits; the 429 response when over them."""
    decision = rate_limit_hit(api_key=request.api_key)
    request.rate_limit = decision
    if decision is None or decision.allowed:
        return None
    return json_error(
        decision.message(), code="rate_limited", status=429, retry_after=decision.retry_after
    )


def _with_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    decision = getattr(request, "rate_limit", None)
    if decision is not None:
        for name, value in decision.headers().items():
            response[name] = value
    return response


class ApiKeyMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return _with_headers(request, _authenticate(request) or self.get_response(request))

    async def __acall__(self, request: HttpRequest):
        if request.path.startswith(PROTECTED_PREFIXES):
            # request.user is lazy and hits the DB, so resolve everything in one thread hop.
            denied = await sync_to_async(_authenticate)(request)
        else:
            request.api_key, request.rate_limit, denied = None, None, None
        return _with_headers(request, denied or await self.get_response(request))
