"""POST /api/classify and reading classifications back."""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import owned_by, owned_get
from routing.models import Classification
from routing.serializers import (
    ClassificationSerializer,
    ClassifyRequestSerializer,
    FeedbackRequestSerializer,
)
from routing.services.classification import classification_create
from routing.services.feedback import feedback_apply
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
    query_serializer = ClassificationFilterSerializer

    def get_queryset(self):
        filters = query_validate(ClassificationFilterSerializer, self.request)
        queryset = super().get_queryset()
        if filters.get("top_category"):
            queryset = queryset.filter(top_category=filters["top_category"])
        return queryset


class ClassificationDetail(_Owned, generics.RetrieveAPIView):
    serializer_class = ClassificationSerializer


class ClassificationFeedback(APIView):
    """`{category}`: the right label of one of your classifications (a staff session may
    correct any). It becomes an example of the category; another key's classification
    is a 404."""

    @extend_schema(request=FeedbackRequestSerializer, responses={200: ClassificationSerializer})
    def post(self, request: Request, pk: int) -> Response:
        classification = owned_get(
            Classification.objects.select_related("prompt"),
            request.auth,
            pk=pk,
            name="classification",
        )
        serializer = FeedbackRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        principal = request.auth
        feedback_apply(
            classification,
            serializer.validated_data["category"],
            source="staff" if principal.api_key is None else "key",
            user=principal.user if principal.api_key is None else None,
        )
        classification.refresh_from_db()
        return Response(ClassificationSerializer(classification).data)
