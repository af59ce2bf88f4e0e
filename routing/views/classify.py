"""POST /api/classify and reading classifications back."""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import owned_by
from routing.models import Classification
from routing.serializers import ClassificationSerializer, ClassifyRequestSerializer
from routing.services.classification import classification_create
from tokenflow_site.endpoints import query_validate
from tokenflow_site.errors import ErrorSerializer


class ClassifyView(APIView):
    """`{prompt, possible_categories?, multi_label?}` -> the persisted Classification."""

    @extend_schema(
        request=ClassifyRequestSerializer,
        responses={
            201: ClassificationSerializer,
            503: OpenApiResponse(
                ErrorSerializer,
                description="No categories to classify against (`no_categories`) or the "
                "classifier model cannot be loaded.",
            ),
        },
        examples=[
            OpenApiExample(
                "Own categories",
                value={
                    "prompt": "My invoice was charged twice this month.",
                    "possible_categories": [
                        "billing",
                        {"name": "technical", "description": "bugs, errors, outages"},
                    ],
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = ClassifyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        classification = classification_create(
            prompt=data["prompt"],
            categories=data.get("possible_categories"),
            multi_label=data["multi_label"],
            api_key=request.auth.api_key,
        )
        return Response(ClassificationSerializer(classification).data, status=201)


class ClassificationFilterSerializer(serializers.Serializer):
    top_category = serializers.CharField(required=False, max_length=100)


class _Owned:
    """A key sees its own classifications; a staff session sees all."""

    def get_queryset(self):
        queryset = Classification.objects.select_related("prompt").order_by("-created_at", "-id")
        return owned_by(queryset, self.request.auth)


@extend_schema(parameters=[ClassificationFilterSerializer])
class ClassificationList(_Owned, generics.ListAPIView):
    """Newest first; `?top_category=` filters."""

    serializer_class = ClassificationSerializer

    def get_queryset(self):
        filters = query_validate(ClassificationFilterSerializer, self.request)
        queryset = super().get_queryset()
        if filters.get("top_category"):
            queryset = queryset.filter(top_category=filters["top_category"])
        return queryset


class ClassificationDetail(_Owned, generics.RetrieveAPIView):
    serializer_class = ClassificationSerializer
