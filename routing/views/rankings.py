from rest_framework import generics

from routing.models import ModelRanking
from routing.serializers import ModelRankingSerializer


class ModelRankingList(generics.ListAPIView):
    """The model table, best rank first, with the categories each model serves."""

    serializer_class = ModelRankingSerializer
    pagination_class = None

    def get_queryset(self):
        queryset = ModelRanking.objects.prefetch_related("routes").order_by("rank", "name")
        enabled = self.request.query_params.get("enabled")
        if enabled in {"true", "false"}:
            queryset = queryset.filter(enabled=enabled == "true")
        return queryset
