"""Thin transports over compression.services."""

from asgiref.sync import sync_to_async
from django.db.models import Prefetch
from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers

from accounts.permissions import owned_by
from compression.models import Compression
from compression.serializers import (
    CompressionDetailSerializer,
    CompressionSerializer,
    CompressRequestSerializer,
)
from compression.services import acompression_create
from routing.models import Generation
from tokenflow_site.endpoints import api_endpoint, query_validate
from tokenflow_site.errors import ErrorSerializer


@api_endpoint(
    CompressRequestSerializer,
    responses={
        201: CompressionSerializer,
        503: OpenApiResponse(
            ErrorSerializer,
            description="The compressor model cannot be loaded (`compressor_unavailable`).",
        ),
    },
    summary="Compress a prompt (LLMLingua)",
    examples=[
        OpenApiExample(
            "Half the tokens",
            value={
                "text": "The quarterly report shows revenue grew 12% while costs fell 3%, "
                "driven by the new pricing model introduced in March. " * 8,
                "ratio": 0.5,
            },
            request_only=True,
        ),
        OpenApiExample(
            "Question-aware, to a token budget",
            value={
                "text": "Alice joined in 2019. Bob leads the data team. The office is in Lyon. "
                * 8,
                "target_tokens": 40,
                "question": "Where is the office?",
                "force_tokens": ["Lyon"],
            },
            request_only=True,
        ),
    ],
)
async def compress(request: HttpRequest, data: dict) -> JsonResponse:
    """POST /api/compress: {text, ratio | target_tokens, question?, force_tokens?, instruction?}."""
    compression = await acompression_create(**data, api_key=request.api_key)
    body = await sync_to_async(lambda: CompressionSerializer(compression).data)()
    return JsonResponse(body, status=201)


class CompressionFilterSerializer(serializers.Serializer):
    engine = serializers.CharField(required=False, max_length=200)
    # allow_null: DRF reads a missing boolean in a QueryDict as False otherwise.
    skipped = serializers.BooleanField(required=False, allow_null=True, default=None)
    prompt = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)


class CompressionQuerysetMixin:
    def get_queryset(self):
        return owned_by(
            Compression.objects.order_by("-created_at", "-id").prefetch_related(
                Prefetch("generations", queryset=Generation.objects.select_related("model"))
            ),
            self.request.auth,
        )


@extend_schema(parameters=[CompressionFilterSerializer])
class CompressionList(CompressionQuerysetMixin, generics.ListAPIView):
    """GET /api/compressions?engine=fast&skipped=false&prompt=12 (paginated, newest first)."""

    serializer_class = CompressionSerializer
    query_serializer = CompressionFilterSerializer

    def get_queryset(self):
        filters = query_validate(CompressionFilterSerializer, self.request)
        queryset = super().get_queryset()
        if "engine" in filters:
            queryset = queryset.filter(engine=filters["engine"])
        if filters.get("skipped") is not None:
            queryset = queryset.filter(skipped=filters["skipped"])
        if "prompt" in filters:
            queryset = queryset.filter(prompt_id=filters["prompt"])
        return queryset


@extend_schema(parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)])
class CompressionDetail(CompressionQuerysetMixin, generics.RetrieveAPIView):
    """GET /api/compressions/<id>."""

    serializer_class = CompressionDetailSerializer
