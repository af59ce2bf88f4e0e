"""Thin transports over compression.services."""

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework import generics

from compression.models import Compression
from compression.serializers import CompressionDetailSerializer, CompressionSerializer
from compression.services import acompression_create, compress_text_check
from tokenflow_site.errors import ApiError, error_response, parse_json_body


@csrf_exempt
@require_POST
async def compress(request: HttpRequest) -> JsonResponse:
    """POST /api/compress: {text, ratio | target_tokens, question?, force_tokens?, instruction?}."""
    try:
        data = parse_json_body(request)
        text = compress_text_check(data.get("text"))
        compression = await acompression_create(
            text=text,
            ratio=data.get("ratio"),
            target_tokens=data.get("target_tokens"),
            question=data.get("question"),
            force_tokens=data.get("force_tokens"),
            instruction=data.get("instruction"),
            engine=data.get("engine"),
            method=data.get("method"),
            api_key=getattr(request, "api_key", None),
        )
    except ApiError as error:
        return error_response(error)
    body = await sync_to_async(lambda: CompressionSerializer(compression).data)()
    return JsonResponse(body, status=201)


class CompressionQuerysetMixin:
    def get_queryset(self):
        queryset = Compression.objects.all()
        api_key = getattr(self.request, "api_key", None)
        if api_key is not None:  # a key sees its own compressions; staff sessions see all
            queryset = queryset.filter(api_key=api_key)
        return queryset


class CompressionList(CompressionQuerysetMixin, generics.ListAPIView):
    """GET /api/compressions?engine=fast&skipped=false&prompt=12 (paginated, newest first)."""

    serializer_class = CompressionSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("engine"):
            queryset = queryset.filter(engine=params["engine"])
        if params.get("skipped") in {"true", "false"}:
            queryset = queryset.filter(skipped=params["skipped"] == "true")
        if params.get("prompt"):
            if not params["prompt"].isdigit():
                raise ApiError("'prompt' must be an integer id.", field="prompt")
            queryset = queryset.filter(prompt_id=int(params["prompt"]))
        return queryset


class CompressionDetail(CompressionQuerysetMixin, generics.RetrieveAPIView):
    """GET /api/compressions/<id>."""

    serializer_class = CompressionDetailSerializer
