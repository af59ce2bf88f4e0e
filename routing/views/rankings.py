from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers

from routing.models import ModelRanking
from routing.serializers import ModelRankingSerializer
from tokenflow_site.endpoints import query_validate


class RankingFilterSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(required=False, allow_null=True, default=None)


@extend_schema(parameters=[RankingFilterSerializer])
class ModelRankingList(generics.ListAPIView):
    """The model table, best rank first, with the categories each model serves."""

    serializer_class = ModelRankingSerializer
    pagination_class = None
    query_serializer = RankingFilterSerializer

    def get_queryset(self):
        filters = query_validate(RankingFilterSerializer, self.request)
        queryset = ModelRanking.objects.prefetch_related("routes").order_by("rank", "name")
        if filters["enabled"] is not None:
            queryset = queryset.filter(enabled=filters["enabled"])
        return queryset
