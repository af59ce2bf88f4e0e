"""HTTP front door for /api/ and /v1/: authenticate (API key or session), authorize through
`accounts.permissions`, and apply the per-key rate limit (429 with Retry-After and
X-RateLimit-* headers). Sync and async."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth import SESSION_KEY
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from accounts.permissions import Principal, principal_authorize
from accounts.ratelimit import rate_limit_hit, rate_limits_in_process
from accounts.selectors import api_key_authenticate, api_key_cached
from tokenflow_site.errors import ApiError, database_unavailable, error_response_for

PROTECTED_PREFIXES = ("/api/", "/v1/")
PUBLIC_PATHS = ("/api/schema/", "/api/docs/", "/api/redoc/")
# Where API clients put the key: OpenAI clients send Authorization, Azure's send api-key.
KEY_HEADERS = ("X-API-Key", "api-key")


def bearer_token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def raw_api_key(headers) -> tuple[bool, str | None]:
    """(a key was offered, the raw key or None if malformed) from request headers."""
    authorization = headers.get("Authorization", "")
    if authorization:
        return True, bearer_token(authorization)
    for name in KEY_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return True, value
    return False, None


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering with the reason instead of the HTML failure view."""

    def _reject(self, request, reason):
        return reason


def _csrf_failure(request: HttpRequest):
    return lambda: _CsrfCheck(lambda r: None).process_view(request, None, (), {})


def _stale_session(request: HttpRequest, user) -> bool:
    """A session cookie naming a user who can no longer log in (inactive, deleted)."""
    if user is not None and user.is_authenticated:
        return False
    session = getattr(request, "session", None)
    return session is not None and SESSION_KEY in session


def request_authorize(request: HttpRequest, *, lookup=None) -> Principal:
    """The caller of any HTTP request: an API key from the headers (which wins over a
    cookie) or a staff session (CSRF on unsafe methods); ApiError 401/403 otherwise.
    The middleware calls it for /api/ and /v1/; other views (e.g. a private /metrics) too.
    `lookup` finds the key for a raw value (the middleware's loop path passes the cache's)."""
    offered, raw = raw_api_key(request.headers)
    key = (lookup or api_key_authenticate)(raw=raw) if raw else None
    if offered and key is None:
        raise ApiError("Invalid or revoked API key.", code="unauthorized", status=401)
    user = None if offered else getattr(request, "user", None)
    return principal_authorize(
        api_key=key,
        user=user,
        method=request.method,
        csrf_failure=_csrf_failure(request),
        stale_session=not offered and _stale_session(request, user),
    )


def _authenticate(request: HttpRequest, *, lookup=None) -> HttpResponse | None:
    """Set request.principal (and request.api_key), or return the 401/403/429 response."""
    request.principal, request.api_key, request.rate_limit = None, None, None
    if not request.path.startswith(PROTECTED_PREFIXES) or request.path.startswith(PUBLIC_PATHS):
        return None
    try:
        request.principal = request_authorize(request, lookup=lookup)
    except ApiError as exc:
        return error_response_for(request, exc)
    request.api_key = key = request.principal.api_key
    return _rate_limit(request) if key is not None else None


def _admit(request: HttpRequest) -> HttpResponse | None:
    """_authenticate, answering 503 (not 500) when the database cannot be reached."""
    try:
        return _authenticate(request)
    except Exception as exc:
        unavailable = database_unavailable(exc)
        if unavailable is None:
            raise
        request.rate_limit = None
        return error_response_for(request, unavailable)


def _admit_on_loop(request: HttpRequest) -> tuple[bool, HttpResponse | None]:
    """(admitted here, denial) without a thread hop, for the common case that does no I/O:
    an API key this process has cached (accounts.selectors.api_key_cached) and rate limits
    kept in process (the embedded default). (False, None) sends the request to `_admit`."""
    _, raw = raw_api_key(request.headers)
    if raw is None or not rate_limits_in_process():
        return False, None
    key = api_key_cached(raw=raw)
    if key is None:
        return False, None
    return True, _authenticate(request, lookup=lambda raw: key)


def _rate_limit(request: HttpRequest) -> HttpResponse | None:
    """Count the request against its key's limits; the 429 response when over them."""
    decision = rate_limit_hit(api_key=request.api_key)
    request.rate_limit = decision
    if decision is None or decision.allowed:
        return None
    return error_response_for(
        request,
        ApiError(
            decision.message(), code="rate_limited", status=429, retry_after=decision.retry_after
        ),
    )


def _with_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    decision = getattr(request, "rate_limit", None)
    if decision is not None:
        for name, value in decision.headers().items():
            response[name] = value
    for name, value in getattr(request, "budget_headers", {}).items():
        response[name] = value
    return response


def _budget_headers(request: HttpRequest) -> None:
    """x-tokenflow-budget-remaining for keys with a budget (read after the view ran, so a
    stream's own reservation is counted; a request that reserved already knows its key's
    spend)."""
    from routing.services.spend import budget_header

    key = getattr(request, "api_key", None)
    try:
        request.budget_headers = budget_header(key, getattr(key, "budget_spent_seen", None))
    except Exception:  # noqa: BLE001 - a header must never fail the response
        request.budget_headers = {}


def _budget_lookup_needed(request: HttpRequest) -> bool:
    """The key has a budget and this request did not learn its spend: a cache read."""
    key = getattr(request, "api_key", None)
    return (
        key is not None
        and key.max_budget_usd is not None
        and getattr(key, "budget_spent_seen", None) is None
    )


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
        response = _admit(request) or self.get_response(request)
        _budget_headers(request)
        return _with_headers(request, response)

    async def __acall__(self, request: HttpRequest):
        if request.path.startswith(PROTECTED_PREFIXES):
            admitted, denied = _admit_on_loop(request)
            if not admitted:
                # request.user is lazy and hits the DB: resolve everything in one thread hop.
                denied = await sync_to_async(_admit)(request)
        else:
            request.principal, request.api_key, request.rate_limit, denied = None, None, None, None
        response = denied or await self.get_response(request)
        if _budget_lookup_needed(request):
            await sync_to_async(_budget_headers)(request)
        else:
            _budget_headers(request)  # no budget, or its spend already known: no thread hop
        return _with_headers(request, response)
