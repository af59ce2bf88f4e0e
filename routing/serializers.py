from rest_framework import serializers

from routing.models import ModelRanking


class ModelRankingSerializer(serializers.ModelSerializer):
    categories = serializers.SerializerMethodField()

    class Meta:
        model = ModelRanking
        fields = [
            "id",
            "name",
            "provider",
            "upstream_model",
            "rank",
            "enabled",
            "input_price_per_mtok",
            "output_price_per_mtok",
            "context_window",
            "description",
            "categories",
        ]

    def get_categories(self, obj) -> list[dict]:
        return [
            {"category": r.category, "priority": r.priority} for r in obj.routes.all() if r.enabled
        ]
