from rest_framework import serializers

from compression.models import Compression


class CompressionSerializer(serializers.ModelSerializer):
    """The /api/compress response and the read-back shape."""

    model = serializers.CharField(source="model_name")
    prompt_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = Compression
        fields = [
            "id",
            "compressed_text",
            "original_tokens",
            "compressed_tokens",
            "ratio",
            "requested_ratio",
            "target_tokens",
            "engine",
            "model",
            "duration_ms",
            "skipped",
            "prompt_id",
            "question",
            "instruction",
            "force_tokens",
            "created_at",
        ]
        read_only_fields = fields


class CompressionDetailSerializer(CompressionSerializer):
    """Read-back of one compression, with the original text."""

    class Meta(CompressionSerializer.Meta):
        fields = [*CompressionSerializer.Meta.fields, "original_text"]
        read_only_fields = fields
