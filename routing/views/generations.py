"""GET /api/generations (filterable, paginated), /api/generations/<id>, and
POST /api/generations/<id>/cancel."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from routing.models import Generation
from routing.selectors import generation_list
from routing.serializers import GenerationSerializer
from routing.services.cancel import generation_cancel_request
from tokenflow_site.endpoints import query_validate
from tokenflow_site.errors import ErrorSerializer


class GenerationFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Generation.Status.choices, required=False)
    model = serializers.CharField(required=False, max_length=200)
    provider = serializers.CharField(required=False, max_length=50)
    transport = serializers.CharField(required=False, max_length=20)


class _Scoped:
    query_serializer = GenerationFilterSerializer

    def get_queryset(self):
        filters = query_validate(GenerationFilterSerializer, self.request)
        return generation_list(principal=self.request.auth, **filters)


@extend_schema(parameters=[GenerationFilterSerializer])
class GenerationList(_Scoped, generics.ListAPIView):
    """Generations, newest first; filters: status, model, provider, transport."""

    serializer_class = GenerationSerializer


class GenerationDetail(_Scoped, generics.RetrieveAPIView):
    """One generation with its full input, output, timings and attempts."""

    serializer_class = GenerationSerializer


class GenerationCancel(_Scoped, generics.GenericAPIView):
    """Ask whichever process streams this generation to stop it (routing.services.cancel):
    202 with the row as it is now; the stream ends with finish_reason "cancelled" and the
    row becomes cancelled within TOKENFLOW_CHECKPOINT_SECONDS of its next chunk."""

    serializer_class = GenerationSerializer

    @extend_schema(
        summary="Cancel a running generation (from any process)",
        request=None,
        responses={
            202: GenerationSerializer,
            404: OpenApiResponse(ErrorSerializer, description="No such generation of yours."),
            409: OpenApiResponse(ErrorSerializer, description="It already ended (not_running)."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        generation = generation_cancel_request(generation=self.get_object())
        return Response(GenerationSerializer(generation).data, status=202)
