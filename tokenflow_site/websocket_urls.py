"""WebSocket routes; each app appends its consumers here."""

from django.urls import path

from batches.consumers import BatchProgressConsumer

websocket_urlpatterns: list = [
    path("ws/batches/<int:job_id>/", BatchProgressConsumer.as_asgi()),
]
