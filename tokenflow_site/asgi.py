"""ASGI entry point: Django for HTTP (incl. streaming), Channels for WebSockets."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
# Initialise Django before importing consumers (they import models).
get_asgi_application()  # django.setup()
from tokenflow_site.middleware import (  # noqa: E402
    AsyncMiddlewareASGIHandler,
    EarlyBodyEnd,
    SharedSyncThreads,
)

# Stock middleware swapped for async-native equivalents (no thread hop per hook).
django_asgi_app = AsyncMiddlewareASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.websocket import WebSocketAuthMiddleware  # noqa: E402
from tokenflow_site.websocket_urls import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": EarlyBodyEnd(
            SharedSyncThreads(django_asgi_app, threads=settings.TOKENFLOW_HTTP_SYNC_THREADS)
        ),
        # API-key sockets need no Origin; cookie-session sockets must pass the Origin check
        # (accounts.websocket).
        "websocket": WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
