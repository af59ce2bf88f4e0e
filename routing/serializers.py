from rest_framework import serializers

from routing.models import Classification, Generation, ModelRanking


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


class ClassifyRequestSerializer(serializers.Serializer):
    """The body of POST /api/classify (documentation; the service validates)."""

    prompt = serializers.CharField()
    possible_categories = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        help_text='Labels, or {"name", "description"} objects; default: the routing table.',
    )
    multi_label = serializers.BooleanField(required=False, default=False)


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
