from rest_framework import serializers

from routing.models import Generation, ModelRanking


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


class GenerationSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name")
    prompt_text = serializers.CharField(source="prompt.text", default=None)

    class Meta:
        model = Generation
        fields = [
            "id",
            "status",
            "model",
            "provider",
            "upstream_model",
            "transport",
            "parameters",
            "prompt_id",
            "prompt_text",
            "input_messages",
            "output_text",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms",
            "duration_ms",
            "attempts",
            "error_code",
            "error_message",
            "classification_id",
            "compression_id",
            "created_at",
            "started_at",
            "finished_at",
        ]
