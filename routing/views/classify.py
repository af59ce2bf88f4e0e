"""POST /api/classify and reading classifications back."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.models import Classification
from routing.serializers import ClassificationSerializer, ClassifyRequestSerializer
from routing.services.classification import classification_create
from tokenflow_site.errors import ApiError


def _data(request: Request) -> dict:
    if not isinstance(request.data, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_json")
    return request.data


class ClassifyView(APIView):
    """`{prompt, possible_categories?, multi_label?}` -> the persisted Classification."""

    @extend_schema(request=ClassifyRequestSerializer, responses={201: ClassificationSerializer})
    def post(self, request: Request) -> Response:
        data = _data(request)
        classification = classification_create(
            prompt=data.get("prompt"),
            possible_categories=data.get("possible_categories"),
            multi_label=data.get("multi_label", False),
            api_key=request.api_key,
        )
        return Response(ClassificationSerializer(classification).data, status=201)


class _Owned:
    """A key sees its own classifications; a staff session sees all."""

    def get_queryset(self):
        queryset = Classification.objects.select_related("prompt")
        key = getattr(self.request, "api_key", None)
        return queryset.filter(api_key=key) if key is not None else queryset


class ClassificationList(_Owned, generics.ListAPIView):
    """Newest first; `?top_category=` filters."""

    serializer_class = ClassificationSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        top = self.request.query_params.get("top_category")
        return queryset.filter(top_category=top) if top else queryset


class ClassificationDetail(_Owned, generics.RetrieveAPIView):
    serializer_class = ClassificationSerializer
