"""WebSocket routes; each app appends its consumers here."""

from django.urls import path

from batches.consumers import BatchProgressConsumer
from routing.consumers import GenerateConsumer
from web.consumers import DashboardConsumer

websocket_urlpatterns: list = [
    path("ws/generate/", GenerateConsumer.as_asgi()),
    path("ws/batches/<int:job_id>/", BatchProgressConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
