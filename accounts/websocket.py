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
import logging
from collections.abc import Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model

from accounts.middleware import raw_api_key
from accounts.models import ApiKey
from accounts.permissions import Principal, principal_authorize
from accounts.selectors import api_key_authenticate
from tokenflow_site.api import json_loads
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)


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


def _stale_session(scope) -> bool:
    """The session names a user, yet no user was logged in (inactive or deleted)."""
    session = scope.get("session")
    return session is not None and SESSION_KEY in session


def _origin(scope):
    """The parsed Origin header (as Channels' OriginValidator reads it), or None."""
    for name, value in scope.get("headers") or []:
        if name == b"origin":
            return urlparse(value.decode("latin-1"))
    return None


async def _refuse_handshake(receive, send) -> None:
    """Close before accepting: the client sees HTTP 403. A plain ASGI answer, not Channels'
    WebsocketDenier consumer, which would subscribe to the channel layer (a Redis BRPOP)
    only to say no, and fail on Redis when the client goes away."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


class _SessionOriginCheck:
    """Sockets that rely on the cookie session must come from an allowed Origin (a host in
    ALLOWED_HOSTS); sockets that bring an API key (or none, to authenticate by message)
    skip the check."""

    def __init__(self, inner):
        self.inner = inner
        self.origins = AllowedHostsOriginValidator(inner)  # its valid_origin() rules

    async def __call__(self, scope, receive, send):
        session_only = scope.get("api_key") is None and _session_user(scope) is not None
        if session_only and not self.origins.valid_origin(_origin(scope)):
            return await _refuse_handshake(receive, send)
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
        if _stale_session(scope):
            # Like HTTP: a cookie naming a user who can no longer log in is a 403.
            principal_authorize(api_key=None, user=None, stale_session=True)
        return None
    return principal_authorize(api_key=key, user=None if key else user)


def _message_principal(raw: object) -> Principal:
    key = api_key_authenticate(raw=raw)
    if key is None:
        raise ApiError("Invalid or revoked API key.", code="unauthorized", status=401)
    return principal_authorize(api_key=key, user=None)  # reads key.user: in this thread


def principal_still_valid(principal: Principal) -> bool:
    """False once the key is revoked (or its owner / the staff user deactivated)."""
    if principal.api_key is not None:
        key = ApiKey.objects.active().select_related("user").filter(pk=principal.api_key.pk)
        key = key.first()
        return key is not None and (key.user is None or key.user.is_active)
    # principal.user may be Channels' UserLazyObject: look the row up by pk.
    user = get_user_model().objects.filter(pk=principal.user.pk).first()
    return user is not None and user.is_active and user.is_staff


# A client's message `id` is echoed back on every answer: keep it small and JSON-safe.
MAX_ID_CHARS = 200
MAX_ID_INT = 2**53  # the integers a JavaScript client reads exactly


def _frame_bytes(text_data: str | None, bytes_data: bytes | None) -> int:
    """The frame's size in bytes (UTF-8 for text), without encoding small frames."""
    if text_data is None:
        return len(bytes_data or b"")
    if len(text_data) * 4 <= settings.TOKENFLOW_WS_MAX_MESSAGE_BYTES:
        return len(text_data)  # cannot be over the limit
    return len(text_data.encode("utf-8", "surrogatepass"))


def _id_problem(value: object) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is None or -MAX_ID_INT <= value <= MAX_ID_INT:
            return None
        return f"'id' must be between -2**53 and 2**53 (got {len(str(value))} digits)."
    if not isinstance(value, str):
        return "'id' must be a string or an integer."
    if len(value) > MAX_ID_CHARS:
        return f"'id' is longer than {MAX_ID_CHARS} characters."
    try:
        value.encode()
    except UnicodeEncodeError:
        return "'id' must be valid Unicode (a lone surrogate was sent)."
    return None


def _bad_text(message: object) -> bool:
    """Does any string (key or value) hold a NUL or a lone surrogate? JSON allows both
    (`"\\u0000"`, `"\\ud800"`), but no database stores them: the HTTP serializers refuse
    them per field, the socket refuses the whole message."""
    stack = [message]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return True
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    return True
    return False


class SocketPrincipalMixin:
    """For AsyncJsonWebsocketConsumer subclasses: `self.principal`, the grace period and
    the revocation check (call `await self.principal_connect()` first in `connect`), plus
    the shared message front door: `decode_message` and `send_error`."""

    principal: Principal | None = None
    _grace: asyncio.Task | None = None

    async def send_error(self, message: str, *, code: str, status: int = 400, **extra) -> None:
        """The WebSocket error message: `{"type": "error", code, message, status, ...}`."""
        body = {"type": "error", "code": code, "message": message, "status": status, **extra}
        await self.send_json({k: v for k, v in body.items() if v is not None})

    async def send_pong(self, message: dict[str, Any]) -> None:
        """The answer to {"type": "ping"}, its `id` echoed (both sockets)."""
        job_id = message.get("id")
        await self.send_json({"type": "pong", **({"id": job_id} if job_id is not None else {})})

    async def decode_message(
        self, text_data: str | None, bytes_data: bytes | None, *, types: Iterable[str]
    ) -> dict[str, Any] | None:
        """A frame (text, or binary holding JSON) as a message `{"type": <one of types>,
        "id"?: str | int, ...}`, or None after an error message; the socket stays open.
        Errors: `message_too_large` (413, over TOKENFLOW_WS_MAX_MESSAGE_BYTES),
        `invalid_json` (malformed, NaN/Infinity, nested too deeply, not an object),
        `invalid` (a NUL or a lone surrogate in a string),
        `required` / `invalid_type` / `unknown_type` (field `type`), `invalid_type` (`id`)."""
        size, limit = _frame_bytes(text_data, bytes_data), settings.TOKENFLOW_WS_MAX_MESSAGE_BYTES
        if size > limit:
            await self.send_error(
                f"The message is {size} bytes; the limit is {limit}.",
                code="message_too_large",
                status=413,
            )
            return None
        try:
            message = json_loads(text_data if text_data is not None else bytes_data or b"")
        except ValueError as exc:  # UnicodeDecodeError included
            await self.send_error(f"Malformed JSON: {exc}"[:300], code="invalid_json")
            return None
        if not isinstance(message, dict):
            await self.send_error("A message must be a JSON object.", code="invalid_json")
            return None
        if _bad_text(message):
            await self.send_error(
                "Strings must not contain NUL characters or lone surrogates.", code="invalid"
            )
            return None
        problem = _id_problem(message.get("id"))
        if problem is not None:
            await self.send_error(problem, code="invalid_type", field="id")
            return None
        kind, job_id = message.get("type"), message.get("id")
        if kind is None:
            await self.send_error("'type' is required.", code="required", field="type", id=job_id)
            return None
        known = sorted(types)
        if not isinstance(kind, str):
            await self.send_error(
                f"'type' must be a string, one of: {', '.join(known)}.",
                code="invalid_type",
                field="type",
                id=job_id,
            )
            return None
        if kind not in known:
            await self.send_error(
                f"Unknown message type {kind[:50]!r}; expected one of: {', '.join(known)}.",
                code="unknown_type",
                field="type",
                id=job_id,
            )
            return None
        return message

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

    async def principal_set(self, raw: object) -> Principal:
        """Authenticate by message (`{"type": "auth", "api_key": ...}`): the new Principal,
        or ApiError 401 (unknown or revoked key) / 403 (its owner is inactive)."""
        self.principal = await database_sync_to_async(_message_principal)(raw)
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


class ResilientLayerMixin:
    """For consumers that join channel-layer groups: when the layer (Redis) is down the
    socket keeps working without pushes. Group joins and leaves are skipped (logged), and
    the layer's receive waits and retries instead of ending the consumer; the consumer's
    own DB polling carries the updates meanwhile (docs/faults.md)."""

    LAYER_RETRY_SECONDS = 2.0
    _channel_receive = None

    @property
    def channel_receive(self):
        return self._channel_receive

    @channel_receive.setter
    def channel_receive(self, receive) -> None:
        # Channels sets this in AsyncConsumer.__call__; wrap it so a layer outage does not
        # propagate out of the consumer's dispatch loop.
        async def resilient():
            while True:
                try:
                    return await receive()
                except Exception:  # noqa: BLE001 - CancelledError (a BaseException) passes
                    logger.warning("Channel layer unavailable; retrying", exc_info=True)
                    await asyncio.sleep(self.LAYER_RETRY_SECONDS)

        self._channel_receive = resilient

    async def group_join(self, group: str) -> bool:
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception:  # noqa: BLE001
            logger.warning("Channel layer unavailable: %s not joined (polling only)", group)
            return False
        return True

    async def group_leave(self, group: str) -> None:
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:  # noqa: BLE001
            logger.warning("Channel layer unavailable: %s not left", group)
