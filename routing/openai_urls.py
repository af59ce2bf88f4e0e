"""/v1/: the OpenAI-compatible routes."""

from django.urls import path

from routing.views.embeddings import embeddings
from routing.views.openai import chat_completions, completions, models

urlpatterns = [
    path("chat/completions", chat_completions, name="openai-chat-completions"),
    path("completions", completions, name="openai-completions"),
    path("embeddings", embeddings, name="openai-embeddings"),
    path("models", models, name="openai-models"),
]
