from rest_framework import serializers

from routing.models import Classification, ModelRanking


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


class ClassificationSerializer(serializers.ModelSerializer):
    prompt = serializers.CharField(source="prompt.text", default=None, read_only=True)

    class Meta:
        model = Classification
        fields = [
            "id",
            "top_category",
            "confidence",
            "scores",
            "engine",
            "multi_label",
            "categories",
            "duration_ms",
            "prompt",
            "created_at",
        ]
