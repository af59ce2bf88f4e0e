"""The one authorization layer: who is calling (a Principal) and what it may see.

Every transport asks the same two questions here:
- `principal_authorize`: may this caller use the API at all? An API key may; a staff
  session may (with CSRF on unsafe HTTP methods); any other session is a 403; nobody is
  a 401. HTTP (`accounts.middleware`), DRF views (`IsApiPrincipal`), streaming views,
  `/v1` and both WebSocket consumers (`accounts.websocket`) call it.
- `owned_by`: which rows of a queryset belong to the caller. A key sees its own records
  only; staff see everything. Someone else's record is the same 404 as a missing one.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey
from tokenflow_site.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """The caller: an API key (with the user it belongs to, if any) or a staff user."""

    api_key: ApiKey | None = None
    user: Any = None

    @property
    def is_staff(self) -> bool:
        """A staff session (not an API key, even one a staff user owns)."""
        return self.api_key is None and self.user is not None and self.user.is_staff

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return f"staff:{self.user.get_username()}"


def _user_is_authenticated(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def principal_authorize(
    *,
    api_key: ApiKey | None,
    user: Any,
    method: str = "GET",
    csrf_failure: Callable[[], str | None] | None = None,
    stale_session: bool = False,
) -> Principal:
    """The Principal for an already-authenticated key or session, or ApiError 401/403.

    `csrf_failure` returns the reason an unsafe session request fails CSRF (or None);
    `stale_session` is a session whose user can no longer log in (inactive, deleted).
    """
    if api_key is not None:
        owner = api_key.user
        if owner is not None and not owner.is_active:
            raise ApiError(
                "The user this API key belongs to is inactive.", code="forbidden", status=403
            )
        return Principal(api_key=api_key, user=owner)
    if _user_is_authenticated(user):
        if not user.is_active:
            raise ApiError("This account is inactive.", code="forbidden", status=403)
        if not user.is_staff:
            raise ApiError(
                "Only staff sessions may use the API; API clients send an API key.",
                code="forbidden",
                status=403,
            )
        if method.upper() not in SAFE_METHODS and csrf_failure is not None:
            reason = csrf_failure()
            if reason is not None:
                raise ApiError(
                    f"CSRF verification failed: {reason}. Send the X-CSRFToken header "
                    "(or use an API key).",
                    code="csrf_failed",
                    status=403,
                )
        return Principal(user=user)
    if stale_session:
        raise ApiError("This session's account is inactive or gone.", code="forbidden", status=403)
    raise ApiError(
        "Missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key').",
        code="unauthorized",
        status=401,
    )


def owned_by(queryset: QuerySet, principal: Principal, *, field: str = "api_key") -> QuerySet:
    """The rows of `queryset` the principal may see: its key's own, or all for staff.
    `field` is the lookup path to the owning ApiKey (e.g. "job__api_key")."""
    if principal.is_staff:
        return queryset
    if principal.api_key is None:
        return queryset.none()
    return queryset.filter(**{field: principal.api_key})


def owned_get(
    queryset: QuerySet, principal: Principal, *, pk: Any, field: str = "api_key", name: str
):
    """One row the principal owns, or 404 (never 403: a foreign id looks like a missing one)."""
    try:
        return owned_by(queryset, principal, field=field).get(pk=int(pk))
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise ApiError(f"{name} {pk} not found.", code="not_found", status=404) from None


def request_principal(request: Any) -> Principal:
    """The Principal the middleware admitted (DRF Request or Django HttpRequest)."""
    request = getattr(request, "_request", request)
    principal = getattr(request, "principal", None)
    if principal is None:
        raise ApiError("Authentication required.", code="unauthorized", status=401)
    return principal


class IsApiPrincipal(BasePermission):
    """DRF face of the layer: the middleware admitted a Principal for this request. It also
    refuses query parameters the view does not define (`query_serializer`, a class or a
    {method: class} dict, plus limit/offset on paginated views): checked here because this
    runs first on every DRF view."""

    def has_permission(self, request, view) -> bool:
        from tokenflow_site.endpoints import query_serializer_fields, query_unknown_check

        request_principal(request)
        declared = getattr(view, "query_serializer", None)
        if isinstance(declared, dict):
            declared = declared.get(request.method)
        allowed = query_serializer_fields(declared)
        if getattr(view, "pagination_class", None) is not None:
            paginator = view.pagination_class
            allowed |= {getattr(paginator, "limit_query_param", "limit")}
            allowed |= {getattr(paginator, "offset_query_param", "offset")}
        query_unknown_check(request, allowed)
        return True
