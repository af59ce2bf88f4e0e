"""GET /api/generations (filterable, paginated) and /api/generations/<id>."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers

from routing.models import Generation
from routing.selectors import generation_list
from routing.serializers import GenerationSerializer
from tokenflow_site.endpoints import query_validate


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
