"""POST /v1/embeddings (OpenAI's shape) and the read-back GET /api/embeddings[/<id>]."""

import base64
from typing import Any

import numpy as np
from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import OpenApiResponse
from rest_framework import generics, serializers

from accounts.permissions import owned_by
from routing.models import Embedding
from routing.openai_serializers import EmbeddingRequestSerializer
from routing.services.embeddings import embeddings_create
from routing.views.openai import OPENAI_ERRORS, OpenAIErrorSerializer, openai_error_response
from tokenflow_site.endpoints import api_endpoint
from tokenflow_site.errors import ApiError


class EmbeddingListSerializer(serializers.Serializer):
    """Documentation of the response (OpenAI's list of embedding objects)."""

    class EmbeddingItem(serializers.Serializer):
        object = serializers.CharField()
        index = serializers.IntegerField()
        embedding = serializers.JSONField(
            help_text="floats, or base64 of little-endian float32 (encoding_format)."
        )

    class EmbeddingUsage(serializers.Serializer):
        prompt_tokens = serializers.IntegerField()
        total_tokens = serializers.IntegerField()

    object = serializers.CharField()
    data = EmbeddingItem(many=True)
    model = serializers.CharField()
    usage = EmbeddingUsage()


def encode(vector: list[float], encoding_format: str) -> Any:
    """OpenAI's encodings: a float list, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


@api_endpoint(
    EmbeddingRequestSerializer,
    render_error=openai_error_response,
    responses={
        200: EmbeddingListSerializer,
        **{
            status: OpenApiResponse(OpenAIErrorSerializer, description=description)
            for status, description in OPENAI_ERRORS.items()
        },
    },
    summary="OpenAI-compatible embeddings",
)
async def embeddings(request: HttpRequest, data: dict[str, Any]) -> JsonResponse:
    """Vectors for one or many inputs; default model `local/minilm` (offline MiniLM,
    384 dimensions). Inputs are stored hashed; vectors are not stored by default."""
    try:
        result = await embeddings_create(
            inputs=data["input"],
            model=data.get("model") or "",
            api_key=request.api_key,
            dimensions=data.get("dimensions"),
            user=data.get("user"),
            encoding_format=data["encoding_format"],
        )
    except ApiError as exc:
        return openai_error_response(exc)
    record = result.record
    tokens = record.prompt_tokens or 0
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode(vector, data["encoding_format"]),
                }
                for index, vector in enumerate(result.vectors)
            ],
            "model": record.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers={"x-tokenflow-embedding-id": str(record.pk)},
    )


class EmbeddingSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name")

    class Meta:
        model = Embedding
        fields = [
            "id",
            "status",
            "model",
            "provider",
            "input_count",
            "input_sha256",
            "dimensions",
            "encoding_format",
            "prompt_tokens",
            "vectors",
            "duration_ms",
            "error_code",
            "error_message",
            "created_at",
        ]


class _Owned:
    serializer_class = EmbeddingSerializer

    def get_queryset(self):
        return owned_by(Embedding.objects.order_by("-created_at", "-id"), self.request.auth)


class EmbeddingList(_Owned, generics.ListAPIView):
    """The caller's embedding calls, newest first (inputs as hashes)."""


class EmbeddingDetail(_Owned, generics.RetrieveAPIView):
    """One embedding call."""
