"""Routing's request serializers (the one validation layer for classification and every
generation transport) and its read-back shapes."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from compression.serializers import CompressOptionsSerializer
from routing.classifiers.base import Category
from routing.models import MAX_EXAMPLE_CHARS, Classification, Generation, ModelRanking
from routing.services.generation import GenerationParams, GenerationRequest
from tokenflow_site.api import (
    LargeTextField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    text_check,
    too_large,
)
from tokenflow_site.schema import NOT_BLANK, exactly_one_of

VALID_ROLES = ("system", "user", "assistant", "tool")
MAX_LABEL_CHARS = 100
MAX_DESCRIPTION_CHARS = 1000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 200
MAX_MODEL_NAME_CHARS = 200


# --- fields ------------------------------------------------------------------------------


def _part_text(content: Any) -> Any:
    """OpenAI content parts [{"type": "text", "text": ...}] -> one string; others as given."""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return content


MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": list(VALID_ROLES)},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "description": "OpenAI text content parts (joined).",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": ["text"]},
                            "text": {"type": "string"},
                        },
                        "required": ["type", "text"],
                    },
                },
            ]
        },
        "name": {"type": "string"},
    },
    "required": ["role", "content"],
}


@extend_schema_field({"type": "array", "items": MESSAGE_SCHEMA, "minItems": 1})
class MessagesField(serializers.Field):
    """OpenAI chat messages -> [{"role", "content"}]; text content parts are joined.
    Hand-written (not a nested serializer) because batch jobs validate 50,000 of these."""

    default_error_messages = {
        "invalid": "must be a non-empty list of messages.",
        "message": "messages[{index}] must be an object with a role ({roles}), a string "
        "content (or a list of text parts) and an optional string name.",
        "too_many_messages": "has {count} messages; the limit is {limit}.",
    }

    def to_internal_value(self, data: Any) -> list[dict[str, str]]:
        if not isinstance(data, list) or not data:
            self.fail("invalid")
        limit = settings.TOKENFLOW_MAX_MESSAGES
        if len(data) > limit:
            self.fail("too_many_messages", count=len(data), limit=limit)
        messages = []
        for index, message in enumerate(data):
            content = _part_text(message.get("content")) if isinstance(message, dict) else None
            name = message.get("name", "") if isinstance(message, dict) else None
            if (
                not isinstance(content, str)
                or message.get("role") not in VALID_ROLES
                or not isinstance(name, str)
            ):
                raise serializers.ValidationError(
                    self.error_messages["message"].format(
                        index=index, roles=", ".join(VALID_ROLES)
                    ),
                    code="invalid_value",
                )
            messages.append({"role": message["role"], "content": text_check(content)})
        return messages

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
                "maxItems": MAX_STOP_SEQUENCES,
            },
        ]
    }
)
class StopField(serializers.Field):
    """`stop`: a string or up to 4 strings (OpenAI's rule)."""

    default_error_messages = {"invalid": "must be a string or up to 4 strings."}

    def to_internal_value(self, data: Any) -> list[str]:
        stop = [data] if isinstance(data, str) else data
        if not (
            isinstance(stop, list)
            and len(stop) <= MAX_STOP_SEQUENCES
            and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)
        ):
            self.fail("invalid")
        return [text_check(s) for s in stop]

    def to_representation(self, value):
        return value


CATEGORY_SCHEMA = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS},
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS},
                "description": {"type": "string", "maxLength": MAX_DESCRIPTION_CHARS},
                "examples": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_EXAMPLE_CHARS},
                    "description": "Example utterances (at most TOKENFLOW_MAX_EXAMPLES).",
                },
            },
            "required": ["name"],
        },
    ]
}


@extend_schema_field(
    {"type": "array", "items": CATEGORY_SCHEMA, "minItems": 2, "uniqueItems": True}
)
class CategoriesField(serializers.Field):
    """`possible_categories`: labels or {name, description?, examples?} objects, 2 to
    TOKENFLOW_MAX_CATEGORIES of them, no duplicates (case-insensitive); examples: up to
    TOKENFLOW_MAX_EXAMPLES non-empty, distinct strings of up to 1000 characters."""

    default_error_messages = {
        "invalid": "must be a list of labels or {{name, description?, examples?}} objects.",
        "item": "[{index}] must be a non-empty string or an object {{name, description?, "
        "examples?}} (names up to {label} characters, descriptions up to {description}).",
        "examples": "[{index}].examples must be a list of strings.",
        "too_many_examples": "[{index}].examples has {count} examples; the limit is {limit} "
        "(TOKENFLOW_MAX_EXAMPLES).",
        "example": "[{index}].examples[{position}] must be a non-empty string of at most "
        "{limit} characters.",
        "duplicate_example": "[{index}].examples[{position}] repeats an earlier example.",
        "too_many_categories": "has {count} categories; the limit is {limit}.",
        "too_few_categories": "needs at least 2 categories.",
        "duplicate_category": "lists {label!r} more than once.",
    }

    def to_internal_value(self, data: Any) -> list[Category]:
        if not isinstance(data, list):
            self.fail("invalid")
        limit = settings.TOKENFLOW_MAX_CATEGORIES
        if len(data) > limit:
            self.fail("too_many_categories", count=len(data), limit=limit)
        if len(data) < 2:
            self.fail("too_few_categories")
        categories, seen = [], set()
        for index, item in enumerate(data):
            category = self._category(item)
            if category is not None and not category.label:
                raise serializers.ValidationError(f"[{index}] is an empty name.", code="blank")
            if category is None:
                message = self.error_messages["item"].format(
                    index=index, label=MAX_LABEL_CHARS, description=MAX_DESCRIPTION_CHARS
                )
                raise serializers.ValidationError(message, code="invalid_value")
            if category.label.casefold() in seen:
                self.fail("duplicate_category", label=category.label)
            seen.add(category.label.casefold())
            if isinstance(item, dict) and item.get("examples") is not None:
                category = Category(
                    category.label, category.description, self._examples(index, item["examples"])
                )
            categories.append(category)
        return categories

    def _examples(self, index: int, examples: Any) -> tuple[str, ...]:
        if not isinstance(examples, list):
            self.fail("examples", index=index)
        limit = settings.TOKENFLOW_MAX_EXAMPLES
        if len(examples) > limit:
            self.fail("too_many_examples", index=index, count=len(examples), limit=limit)
        texts, seen = [], set()
        for position, example in enumerate(examples):
            if (
                not isinstance(example, str)
                or not example.strip()
                or len(example) > MAX_EXAMPLE_CHARS
            ):
                self.fail("example", index=index, position=position, limit=MAX_EXAMPLE_CHARS)
            key = " ".join(example.casefold().split())
            if key in seen:
                self.fail("duplicate_example", index=index, position=position)
            seen.add(key)
            texts.append(text_check(example.strip()))
        return tuple(texts)

    @staticmethod
    def _category(item: Any) -> Category | None:
        if isinstance(item, dict):
            label, description = item.get("name", item.get("category")), item.get("description")
        else:
            label, description = item, ""
        description = description or ""
        if not isinstance(label, str) or not isinstance(description, str):
            return None
        label = label.strip()
        if len(label) > MAX_LABEL_CHARS or len(description) > MAX_DESCRIPTION_CHARS:
            return None
        text_check(label), text_check(description)
        return Category(label, description.strip())

    def to_representation(self, value):
        return [
            {"name": c.label, "description": c.description, "examples": list(c.examples)}
            for c in value
        ]


# --- requests ----------------------------------------------------------------------------


class ClassifyRequestSerializer(serializers.Serializer):
    """The body of POST /api/classify."""

    prompt = LargeTextField(max_chars=lambda: settings.TOKENFLOW_MAX_INPUT_CHARS)
    possible_categories = CategoriesField(
        required=False,
        allow_null=True,
        help_text='Labels, or {"name", "description"?, "examples"?} objects; default: the '
        "routing table (its descriptions, examples and trained router).",
    )
    multi_label = StrictBooleanField(required=False, default=False)

    def openapi_request_schema(self, schema: dict) -> None:
        properties = schema["properties"]
        properties["prompt"].update(pattern=NOT_BLANK, maxLength=settings.TOKENFLOW_MAX_INPUT_CHARS)
        properties["possible_categories"]["maxItems"] = settings.TOKENFLOW_MAX_CATEGORIES

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty.", code="blank")
        return value


class SamplingSerializer(serializers.Serializer):
    """Sampling parameters with OpenAI's ranges."""

    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(
        required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1
    )
    cache = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="Response cache: true serves and stores this request's answer whatever its "
        "temperature; false (or the header `Cache-Control: no-cache`) skips the cache; "
        "unset: only temperature 0 is cached.",
    )

    def openapi_request_schema(self, schema: dict) -> None:
        for name in ("max_tokens", "max_completion_tokens"):
            if name in schema["properties"]:
                schema["properties"][name]["maximum"] = settings.TOKENFLOW_MAX_OUTPUT_TOKENS

    def validate_max_tokens(self, value: int | None) -> int | None:
        limit = settings.TOKENFLOW_MAX_OUTPUT_TOKENS
        if value is not None and value > limit:
            raise serializers.ValidationError(
                f"must be at most {limit} (TOKENFLOW_MAX_OUTPUT_TOKENS).", code="max_value"
            )
        return value

    @staticmethod
    def params(attrs: dict[str, Any]) -> GenerationParams:
        return GenerationParams(
            **{name: attrs.get(name) for name in ("temperature", "top_p", "max_tokens", "stop")},
            seed=attrs.get("seed"),
        )

    def cache_choice(self, attrs: dict[str, Any]) -> bool | None:
        """The body's `cache`, or False when the HTTP request says `Cache-Control: no-cache`
        (or no-store)."""
        request = self.context.get("request")
        directives = request.headers.get("Cache-Control", "").lower() if request else ""
        if "no-cache" in directives or "no-store" in directives:
            return False
        return attrs.get("cache")


class GenerateRequestSerializer(SamplingSerializer):
    """POST /api/generate and the WebSocket `generate` message: `prompt` or `messages`, a
    model name or "auto", sampling parameters, optional `compress` and (for "auto")
    `possible_categories`."""

    prompt = StrictCharField(required=False, allow_null=True, trim_whitespace=False)
    messages = MessagesField(required=False, allow_null=True)
    model = StrictCharField(max_length=MAX_MODEL_NAME_CHARS, help_text='A model name or "auto".')
    compress = CompressOptionsSerializer(required=False, allow_null=True)
    possible_categories = CategoriesField(required=False, allow_null=True)

    def openapi_request_schema(self, schema: dict) -> None:
        super().openapi_request_schema(schema)
        properties = schema["properties"]
        properties["prompt"]["pattern"] = NOT_BLANK
        properties["messages"]["maxItems"] = settings.TOKENFLOW_MAX_MESSAGES
        properties["possible_categories"]["maxItems"] = settings.TOKENFLOW_MAX_CATEGORIES
        exactly_one_of(schema, "prompt", "messages")

    def validate(self, attrs: dict[str, Any]) -> GenerationRequest:
        prompt, messages = attrs.get("prompt"), attrs.get("messages")
        if prompt is not None and messages is not None:
            raise serializers.ValidationError(
                {"prompt": "send either 'prompt' or 'messages', not both."}, code="invalid_value"
            )
        if prompt is None and messages is None:
            raise serializers.ValidationError(
                {"prompt": "'prompt' or 'messages' is required."}, code="required"
            )
        if prompt is not None:
            if not prompt.strip():
                raise serializers.ValidationError({"prompt": "must not be empty."}, code="blank")
            messages = [{"role": "user", "content": prompt}]
        size, limit = sum(len(m["content"]) for m in messages), settings.TOKENFLOW_MAX_INPUT_CHARS
        if size > limit:
            raise too_large("prompt" if prompt is not None else "messages", size, limit)
        return GenerationRequest(
            messages=messages,
            model=attrs.get("model") or "auto",
            params=self.params(attrs),
            compress=attrs.get("compress"),
            possible_categories=attrs.get("possible_categories"),
            cache=self.cache_choice(attrs),
        )


class SelectRequestSerializer(GenerateRequestSerializer):
    """POST /api/models/select: /api/generate with model "auto" (the field is ignored)."""

    model = StrictCharField(required=False, default="auto", max_length=MAX_MODEL_NAME_CHARS)

    def validate(self, attrs: dict[str, Any]) -> GenerationRequest:
        request = super().validate(attrs)
        return GenerationRequest(**{**request.__dict__, "model": "auto"})


class ModelRankingSerializer(serializers.ModelSerializer):
    categories = serializers.SerializerMethodField()
    capabilities = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="chat, tools, json_object, json_schema, vision, embeddings",
    )

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
            "capabilities",
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
            "feedback_category",
            "feedback_at",
            "created_at",
        ]


class FeedbackRequestSerializer(serializers.Serializer):
    """The body of POST /api/classifications/<id>/feedback."""

    category = StrictCharField(
        max_length=MAX_LABEL_CHARS, help_text="The right label: one of the classification's."
    )

    def validate_category(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty.", code="blank")
        return value.strip()


class GenerationSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name")
    prompt_text = serializers.CharField(source="prompt.text", default=None)
    # USD as JSON numbers (a Decimal would render as a string).
    cost_usd = serializers.FloatField(read_only=True, allow_null=True)
    cost_saved_usd = serializers.FloatField(read_only=True, allow_null=True)

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
            "options",
            "output_text",
            "tool_calls",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "cached_prompt_tokens",
            "cost_usd",
            "cache",
            "cost_saved_usd",
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
