"""WebSocket routes; each app appends its consumers here."""

from django.urls import path

from routing.consumers import GenerateConsumer

websocket_urlpatterns: list = [
    path("ws/generate/", GenerateConsumer.as_asgi()),
]
