"""WebSocket auth: an API key in the Authorization header or ?api_key=, or the Django session.

Consumers may also accept a key in the first message (see `scope["api_key"]` being None).
"""

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async

from accounts.middleware import bearer_token
from accounts.selectors import api_key_authenticate


def _raw_key(scope) -> str | None:
    headers = dict(scope.get("headers") or [])
    header = headers.get(b"authorization", b"").decode("latin-1")
    if header:
        return bearer_token(header)
    query = parse_qs((scope.get("query_string") or b"").decode())
    return (query.get("api_key") or [None])[0]


class _ApiKeyScope:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        raw = _raw_key(scope)
        key = await database_sync_to_async(api_key_authenticate)(raw=raw) if raw else None
        scope = dict(scope, api_key=key, api_key_invalid=bool(raw) and key is None)
        return await self.inner(scope, receive, send)


def WebSocketAuthMiddleware(inner):  # noqa: N802 - mirrors AuthMiddlewareStack
    """Session auth (staff in a browser) plus API-key auth."""
    return AuthMiddlewareStack(_ApiKeyScope(inner))


async def scope_is_authenticated(scope) -> bool:
    if scope.get("api_key") is not None:
        return True
    user = scope.get("user")
    return bool(user is not None and user.is_authenticated)
