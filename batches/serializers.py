"""Batch API shapes: request bodies and queries (validated here, before any service runs)
and the JSON responses (jobs, items, attempts, statistics, errors)."""

from typing import Any

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from batches import selectors
from batches.jsonl import JsonLines, jsonl_rows, too_large, upload_limit
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.policy import hook_allowed
from batches.templates import template_parse
from tokenflow_site.api import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    json_loads,
)
from tokenflow_site.errors import ApiError

# --- request: job options ----------------------------------------------------------------


class BoundedFloatField(StrictFloatField):
    """A number whose upper bound is a setting, read when a value is validated."""

    def __init__(self, *, max_setting: str, **kwargs) -> None:
        self.max_setting = max_setting
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        high = getattr(settings, self.max_setting)
        if value > high:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {high:g} ({self.max_setting}).",
                code="max_value",
            )
        return value


class RetryPolicySerializer(serializers.Serializer):
    """How an item's failed attempts are retried (defaults: settings.TOKENFLOW_BATCH_*)."""

    retry_statuses = serializers.ListField(
        child=StrictIntegerField(min_value=100, max_value=599),
        required=False,
        max_length=100,
        help_text="Upstream HTTP statuses worth another attempt.",
    )
    backoff_base = BoundedFloatField(
        required=False,
        min_value=0,
        max_setting="TOKENFLOW_BATCH_MAX_BACKOFF",
        help_text="Seconds (at most TOKENFLOW_BATCH_MAX_BACKOFF).",
    )
    backoff_max = BoundedFloatField(
        required=False,
        min_value=0,
        max_setting="TOKENFLOW_BATCH_MAX_BACKOFF",
        help_text="Seconds (at most TOKENFLOW_BATCH_MAX_BACKOFF).",
    )
    timeout = BoundedFloatField(
        required=False,
        min_value=0.001,
        max_setting="TOKENFLOW_BATCH_MAX_TIMEOUT",
        help_text="Seconds per attempt (at most TOKENFLOW_BATCH_MAX_TIMEOUT).",
    )
    retry_timeouts = StrictBooleanField(required=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    f"unknown keys: {', '.join(unknown)}.", code="unknown_field"
                )
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "type": "object",
        "required": ["custom_id", "body"],
        "properties": {
            "custom_id": {"type": "string", "minLength": 1, "maxLength": 200},
            "method": {"type": "string", "enum": ["POST"]},
            "url": {"type": "string", "enum": ["/v1/chat/completions", "/chat/completions"]},
            "body": {
                "type": "object",
                "description": "A chat completion body: messages (or prompt, or variables "
                "for the job's prompt_template), model?, sampling parameters, extra?.",
                "additionalProperties": True,
            },
        },
    }
)
class BatchItemField(serializers.JSONField):
    """One request of the OpenAI Batch input format; `batches.services` validates it so
    that JSON items and JSONL lines get the same errors (naming the index or the line)."""


class JobOptionsSerializer(serializers.Serializer):
    """The options of a new job, as JSON values."""

    name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=200)
    model = StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=200,
        help_text="Default model for items without one, or 'auto'.",
    )
    prompt_template = StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        help_text="A template with plain {name} fields filled from an item's body.variables "
        "(no format specs, attributes or indexes; at most TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS).",
    )
    concurrency = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Concurrent requests (at most TOKENFLOW_BATCH_MAX_CONCURRENCY).",
    )
    max_attempts = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=100)
    handler = StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=300,
        help_text="Dotted path of a policy hook; only the handlers in "
        "TOKENFLOW_BATCH_HANDLERS (403 otherwise, for staff too).",
    )
    parameters = serializers.DictField(
        required=False, allow_null=True, help_text="Default sampling parameters for items."
    )
    retry_policy = RetryPolicySerializer(required=False, allow_null=True)

    def validate_concurrency(self, value: int | None) -> int | None:
        high = settings.TOKENFLOW_BATCH_MAX_CONCURRENCY
        if value is not None and value > high:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {high}.", code="max_value"
            )
        return value

    def validate_prompt_template(self, value: str | None) -> str | None:
        if value:
            template_parse(value)  # 400 for specs / attributes, 413 beyond the length cap
        return value

    def validate_handler(self, value: str | None) -> str | None:
        if value and not hook_allowed(value):
            raise ApiError(
                f"Handler {value!r} is not allowed (see TOKENFLOW_BATCH_HANDLERS).",
                code="forbidden",
                status=403,
                field="handler",
            )
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The validated options for `services.batch_create` (null means "the default")."""
        names = JobOptionsSerializer._declared_fields
        return {k: v for k, v in self.validated_data.items() if k in names and v is not None}


class BatchCreateSerializer(JobOptionsSerializer):
    """POST /api/batches with a JSON body."""

    items = serializers.ListField(child=BatchItemField(), allow_empty=False, min_length=1)


@extend_schema_field(OpenApiTypes.STR)
class JsonObjectStringField(serializers.Field):
    """A JSON object sent as text (a query or form field), checked by `serializer_class`."""

    default_error_messages = {
        "invalid": "must be a string holding a JSON object.",
        "invalid_json": "is not valid JSON.",
        "not_a_dict": "must be a JSON object.",
    }

    def __init__(self, serializer_class: type[serializers.Serializer] | None = None, **kwargs):
        self.serializer_class = serializer_class
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            value = json_loads(data)
        except ValueError:
            self.fail("invalid_json")
        if not isinstance(value, dict):
            self.fail("not_a_dict")
        if self.serializer_class is None:
            return value
        serializer = self.serializer_class(data=value)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def to_representation(self, value):  # pragma: no cover - request-only field
        return value


class JobFormOptionsSerializer(JobOptionsSerializer):
    """The same options as text: the query string of a JSONL body, or multipart fields."""

    concurrency = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Concurrent requests (at most TOKENFLOW_BATCH_MAX_CONCURRENCY).",
    )
    max_attempts = serializers.IntegerField(required=False, min_value=1, max_value=100)
    parameters = JsonObjectStringField(
        required=False, help_text="Default sampling parameters: a JSON object."
    )
    retry_policy = JsonObjectStringField(
        RetryPolicySerializer,
        required=False,
        help_text="A JSON object: retry_statuses, backoff_base, backoff_max, timeout, "
        "retry_timeouts.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.allow_null = False  # text has no null

    def to_internal_value(self, data):
        if isinstance(data, QueryDict):
            data = data.dict()  # one value per name (the last), never a list
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "format": "binary"})
class JsonlFileField(serializers.FileField):
    """An uploaded JSONL file -> JsonLines (a 413 beyond TOKENFLOW_MAX_UPLOAD_BYTES)."""

    def to_internal_value(self, data) -> JsonLines:
        upload = super().to_internal_value(data)
        if upload.size > upload_limit():
            raise too_large(self.field_name, upload.size)
        upload.seek(0)
        return JsonLines(jsonl_rows(upload.file, field=self.field_name))


class BatchUploadSerializer(JobFormOptionsSerializer):
    """POST /api/batches as multipart/form-data: the JSONL `file` plus the options."""

    file = JsonlFileField(help_text="The JSONL input, one request per line.")


class PauseSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=["soft", "hard"],
        default="soft",
        help_text="soft: in-flight items finish; hard: they go back to pending at once.",
    )


class ResultsQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["completed", "failed", "cancelled"],
        required=False,
        allow_blank=True,
        help_text="Default: completed and failed items.",
    )


class ItemsQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=BatchItem.Status.choices, required=False, allow_blank=True
    )


# --- responses ---------------------------------------------------------------------------


class _CountsSerializer(serializers.Serializer):
    pending = serializers.IntegerField()
    running = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class _TokensSerializer(serializers.Serializer):
    prompt = serializers.IntegerField()
    completion = serializers.IntegerField()
    total = serializers.IntegerField()


class _LatencySerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p90 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class _AttemptCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()


class _ErrorCountsSerializer(serializers.Serializer):
    attempts = serializers.DictField(child=serializers.IntegerField(), help_text="code -> n")
    failed_items = serializers.DictField(child=serializers.IntegerField(), help_text="code -> n")


class BatchStatisticsSerializer(serializers.Serializer):
    """`selectors.batch_statistics` (documentation: the selector builds the dict)."""

    job_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=BatchJob.Status.choices)
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    counts = _CountsSerializer()
    percent = serializers.FloatField()
    pause_reason = serializers.CharField(allow_null=True, help_text="Why the system paused it.")
    cost_usd = serializers.FloatField(help_text="What the job's attempts cost so far (USD).")
    created_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    elapsed_seconds = serializers.FloatField()
    throughput_per_second = serializers.FloatField()
    overall_throughput_per_second = serializers.FloatField()
    eta_seconds = serializers.FloatField(allow_null=True)
    tokens = _TokensSerializer()
    latency_ms = _LatencySerializer()
    attempts = _AttemptCountsSerializer()
    errors = _ErrorCountsSerializer()


class BatchJobSummarySerializer(serializers.ModelSerializer):
    """A job as listed (no statistics: they cost a few queries per job)."""

    object = serializers.SerializerMethodField()

    class Meta:
        model = BatchJob
        fields = [
            "id",
            "object",
            "name",
            "model",
            "concurrency",
            "max_attempts",
            "retry_policy",
            "handler",
            "status",
            "pause_reason",
            "total_items",
        ]
        read_only_fields = fields

    def get_object(self, job: BatchJob) -> str:
        return "batch"


class BatchJobSerializer(BatchJobSummarySerializer):
    """A job with its live statistics (counts, throughput, ETA, tokens, latency, errors)."""

    statistics = serializers.SerializerMethodField()

    class Meta(BatchJobSummarySerializer.Meta):
        fields = [*BatchJobSummarySerializer.Meta.fields, "statistics"]
        read_only_fields = fields

    @extend_schema_field(BatchStatisticsSerializer)
    def get_statistics(self, job: BatchJob) -> dict[str, Any]:
        return selectors.batch_statistics(job=job)


class BatchAttemptSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name")
    error_code = serializers.CharField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)

    class Meta:
        model = BatchAttempt
        fields = [
            "number",
            "status",
            "model",
            "request",
            "result",
            "error_code",
            "error_message",
            "status_code",
            "retryable",
            "latency_ms",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "created_at",
        ]
        read_only_fields = fields

    def to_representation(self, attempt: BatchAttempt) -> dict[str, Any]:
        data = super().to_representation(attempt)
        data["error_code"] = data["error_code"] or None  # "" is stored for "no error"
        data["error_message"] = data["error_message"] or None
        return data


class BatchItemSerializer(serializers.ModelSerializer):
    """An item with its attempt trajectory (what was sent and what came back, per attempt)."""

    model = serializers.SerializerMethodField()
    trajectory = BatchAttemptSerializer(source="attempt_set", many=True)

    class Meta:
        model = BatchItem
        fields = [
            "id",
            "custom_id",
            "status",
            "model",
            "params",
            "result",
            "error",
            "attempts",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "finished_at",
            "trajectory",
        ]
        read_only_fields = fields

    def get_model(self, item: BatchItem) -> str | None:
        return item.model_name or item.params.get("model")


class BatchErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="One code per kind of mistake, e.g. invalid_type.")
    message = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The request field at fault.")
    line = serializers.IntegerField(required=False, help_text="The JSONL line at fault.")
    index = serializers.IntegerField(required=False, help_text="The items[] index at fault.")
    status = serializers.CharField(required=False, help_text="The job's status (409).")
    limit = serializers.IntegerField(required=False, help_text="The limit exceeded (413).")


class BatchErrorSerializer(serializers.Serializer):
    """The one error shape of the API, with the members batch errors add."""

    error = BatchErrorBodySerializer()
