"""WebSocket front door: the same authentication and authorization as HTTP.

- An API key in the Authorization / X-API-Key / api-key header or `?api_key=`, or later in
  a first `{"type": "auth"}` message. API-key clients need no `Origin` header (a standard
  client such as Python's `websockets` sends none).
- A cookie session, only for staff, and only when `Origin` is one of ALLOWED_HOSTS (a
  foreign page must not ride a staff member's cookie).
- `SocketPrincipalMixin` gives consumers the Principal, a grace period for sockets that
  have not authenticated yet, and a revocation check before every job.
"""

import asyncio
from contextlib import suppress
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.contrib.auth import get_user_model

from accounts.middleware import raw_api_key
from accounts.models import ApiKey
from accounts.permissions import Principal, principal_authorize
from accounts.selectors import api_key_authenticate
from tokenflow_site.errors import ApiError


class _Headers:
    """`scope["headers"]` with the case-insensitive .get() of request.headers."""

    def __init__(self, scope) -> None:
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers") or []
        }

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def _raw_key(scope) -> tuple[bool, str | None]:
    offered, raw = raw_api_key(_Headers(scope))
    if offered:
        return offered, raw
    query = parse_qs((scope.get("query_string") or b"").decode(errors="replace"))
    raw = (query.get("api_key") or [None])[0]
    return raw is not None, raw


class _ApiKeyScope:
    """Puts `api_key` (or None) and `api_key_invalid` in the scope."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        offered, raw = _raw_key(scope)
        key = await database_sync_to_async(api_key_authenticate)(raw=raw) if raw else None
        scope = dict(scope, api_key=key, api_key_invalid=offered and key is None)
        return await self.inner(scope, receive, send)


def _session_user(scope):
    user = scope.get("user")
    return user if user is not None and user.is_authenticated else None


class _SessionOriginCheck:
    """Sockets that rely on the cookie session must come from an allowed Origin; sockets
    that bring an API key (or none, to authenticate by message) skip the check."""

    def __init__(self, inner):
        self.inner = inner
        self.checked = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope, receive, send):
        if scope.get("api_key") is None and _session_user(scope) is not None:
            return await self.checked(scope, receive, send)
        return await self.inner(scope, receive, send)


def WebSocketAuthMiddleware(inner):  # noqa: N802 - mirrors AuthMiddlewareStack
    """Session auth (staff in a browser, Origin-checked) plus API-key auth."""
    return AuthMiddlewareStack(_ApiKeyScope(_SessionOriginCheck(inner)))


def scope_principal(scope) -> Principal | None:
    """The socket's Principal from its handshake; None if it must authenticate by message.
    Raises ApiError 401 (bad key) / 403 (non-staff or inactive session)."""
    if scope.get("api_key_invalid"):
        raise ApiError("Invalid or revoked API key.", code="unauthorized", status=401)
    key, user = scope.get("api_key"), _session_user(scope)
    if key is None and user is None:
        return None
    return principal_authorize(api_key=key, user=None if key else user)


def principal_still_valid(principal: Principal) -> bool:
    """False once the key is revoked (or its owner / the staff user deactivated)."""
    if principal.api_key is not None:
        key = ApiKey.objects.active().select_related("user").filter(pk=principal.api_key.pk)
        key = key.first()
        return key is not None and (key.user is None or key.user.is_active)
    # get_user_model(): a session's user is a channels UserLazyObject, not the model class.
    user = get_user_model().objects.filter(pk=principal.user.pk).first()
    return user is not None and user.is_active and user.is_staff


class SocketPrincipalMixin:
    """For AsyncJsonWebsocketConsumer subclasses: `self.principal`, the grace period and
    the revocation check. Call `await self.principal_connect()` first in `connect`."""

    principal: Principal | None = None
    _grace: asyncio.Task | None = None

    async def send_error(self, message: str, *, code: str, status: int = 400, **extra) -> None:
        """The WebSocket error message: `{"type": "error", code, message, status, ...}`."""
        body = {"type": "error", "code": code, "message": message, "status": status, **extra}
        await self.send_json({k: v for k, v in body.items() if v is not None})

    async def principal_connect(self) -> bool:
        """Resolve the handshake's Principal; refused credentials get an error message and
        a close (False). Without credentials, the socket (which the caller accepts) has
        TOKENFLOW_WS_AUTH_GRACE seconds to authenticate by message."""
        try:
            self.principal = await database_sync_to_async(scope_principal)(self.scope)
        except ApiError as exc:
            await self.accept()
            await self.send_error(exc.message, code=exc.code, status=exc.status)
            await self.close(code=4000 + exc.status)
            return False
        if self.principal is None:
            self._grace = asyncio.create_task(self._close_after_grace())
        return True

    async def principal_set(self, raw: object) -> Principal | None:
        """Authenticate by message (`{"type": "auth", "api_key": ...}`)."""
        key = (
            await database_sync_to_async(api_key_authenticate)(raw=raw)
            if isinstance(raw, str) and raw
            else None
        )
        if key is None:
            return None
        try:
            self.principal = principal_authorize(api_key=key, user=None)
        except ApiError:
            return None
        self._cancel_grace()
        return self.principal

    async def principal_check(self) -> bool:
        """Before each job: is the Principal still allowed? If not, say so and close."""
        if self.principal is None:
            return False
        if await database_sync_to_async(principal_still_valid)(self.principal):
            return True
        await self.send_error("The API key was revoked.", code="unauthorized", status=401)
        await self.close(code=4401)
        return False

    def principal_disconnect(self) -> None:
        self._cancel_grace()

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    async def _close_after_grace(self) -> None:
        await asyncio.sleep(settings.TOKENFLOW_WS_AUTH_GRACE)
        if self.principal is None:
            with suppress(Exception):
                await self.send_error(
                    "Not authenticated in time; send an API key on connect or as the first "
                    'message ({"type": "auth", "api_key": "..."}).',
                    code="unauthorized",
                    status=401,
                )
                await self.close(code=4401)
