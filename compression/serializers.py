"""Compression requests (validated here, once) and the read-back shapes."""

from django.conf import settings
from rest_framework import serializers

from compression.engines import METHODS
from compression.models import Compression
from tokenflow_site.api import LargeTextField, StrictCharField, StrictFloatField, StrictIntegerField
from tokenflow_site.schema import NOT_BLANK, exactly_one_of

MAX_FORCE_TOKENS = 100
MAX_FORCE_TOKEN_CHARS = 100
MAX_QUESTION_CHARS = 2000


class CompressOptionsSerializer(serializers.Serializer):
    """How to compress: `ratio` or `target_tokens`, plus optional question-aware and
    forced-token options. Also the `compress` object of generation requests."""

    ratio = StrictFloatField(required=False, min_value=0, max_value=1, help_text="(0, 1]")
    target_tokens = StrictIntegerField(required=False, min_value=1, max_value=1_000_000)
    question = StrictCharField(
        required=False, allow_blank=True, max_length=MAX_QUESTION_CHARS, default=""
    )
    instruction = StrictCharField(
        required=False, allow_blank=True, max_length=MAX_QUESTION_CHARS, default=""
    )
    force_tokens = serializers.ListField(
        child=StrictCharField(max_length=MAX_FORCE_TOKEN_CHARS),
        required=False,
        max_length=MAX_FORCE_TOKENS,
        default=list,
    )
    engine = StrictCharField(required=False, allow_null=True, default=None, max_length=200)
    method = serializers.ChoiceField(choices=METHODS, required=False, allow_null=True, default=None)

    def openapi_request_schema(self, schema: dict) -> None:
        properties = schema["properties"]
        properties["ratio"]["exclusiveMinimum"] = True
        properties["engine"]["enum"] = [*sorted(settings.TOKENFLOW_COMPRESSOR_ENGINES), None]
        properties["force_tokens"]["items"]["pattern"] = NOT_BLANK
        exactly_one_of(schema, "ratio", "target_tokens")

    def validate_ratio(self, value: float) -> float:
        if value <= 0:
            raise serializers.ValidationError("must be greater than 0.", code="min_value")
        return value

    def validate_engine(self, value: str | None) -> str | None:
        if value is not None and value not in settings.TOKENFLOW_COMPRESSOR_ENGINES:
            names = ", ".join(sorted(settings.TOKENFLOW_COMPRESSOR_ENGINES))
            raise serializers.ValidationError(
                f"unknown engine {value!r}; choose one of: {names}.", code="invalid_choice"
            )
        return value

    def validate_force_tokens(self, value: list[str]) -> list[str]:
        if not all(token.strip() for token in value):
            raise serializers.ValidationError("entries must not be empty.", code="blank")
        return list(dict.fromkeys(value))

    def validate(self, attrs: dict) -> dict:
        ratio, target = attrs.get("ratio"), attrs.get("target_tokens")
        if ratio is not None and target is not None:
            raise serializers.ValidationError(
                {"ratio": "send either 'ratio' or 'target_tokens', not both."}, code="invalid_value"
            )
        if ratio is None and target is None:
            raise serializers.ValidationError(
                {"ratio": "'ratio' or 'target_tokens' is required."}, code="required"
            )
        attrs.setdefault("ratio", None)
        attrs.setdefault("target_tokens", None)
        return attrs


class CompressRequestSerializer(CompressOptionsSerializer):
    """The body of POST /api/compress."""

    text = LargeTextField(max_chars=lambda: settings.TOKENFLOW_COMPRESSOR_MAX_CHARS)

    def openapi_request_schema(self, schema: dict) -> None:
        super().openapi_request_schema(schema)
        text = schema["properties"]["text"]
        text.update(pattern=NOT_BLANK, maxLength=settings.TOKENFLOW_COMPRESSOR_MAX_CHARS)

    def validate_text(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty.", code="blank")
        return value


class CompressionSerializer(serializers.ModelSerializer):
    """The /api/compress response and the read-back shape."""

    model = serializers.CharField(source="model_name")
    prompt_id = serializers.IntegerField(allow_null=True)
    tokens_saved = serializers.SerializerMethodField(help_text="original - compressed tokens")
    saved_usd = serializers.SerializerMethodField(
        help_text="tokens_saved at the input price of the model that received the compressed "
        "prompt (null when no generation used it)."
    )
    target_model = serializers.SerializerMethodField(help_text="That model's name, or null.")

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
            "tokens_saved",
            "saved_usd",
            "target_model",
            "prompt_id",
            "question",
            "instruction",
            "force_tokens",
            "created_at",
        ]
        read_only_fields = fields

    def get_tokens_saved(self, compression: Compression) -> int:
        return max(0, compression.original_tokens - compression.compressed_tokens)

    def _target(self, compression: Compression):
        """The model of the (first) generation sent the compressed prompt."""
        if compression.pk is None:
            return None
        generation = next(iter(compression.generations.all()), None)
        return generation.model if generation is not None else None

    def get_saved_usd(self, compression: Compression) -> float | None:
        from routing.services.spend import input_cost

        model = self._target(compression)
        if model is None:
            return None
        return float(input_cost(model, self.get_tokens_saved(compression)))

    def get_target_model(self, compression: Compression) -> str | None:
        model = self._target(compression)
        return model.name if model is not None else None


class CompressionDetailSerializer(CompressionSerializer):
    """Read-back of one compression, with the original text."""

    class Meta(CompressionSerializer.Meta):
        fields = [*CompressionSerializer.Meta.fields, "original_text"]
        read_only_fields = fields
