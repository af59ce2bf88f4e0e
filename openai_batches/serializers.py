"""Request shapes of /v1/files and /v1/batches (bounded), and response documentation."""

from typing import Any

from rest_framework import serializers

from openai_batches.models import File
from tokenflow_site.api import StrictCharField, StrictIntegerField

MAX_METADATA_KEYS = 16  # OpenAI's limits
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class FileUploadSerializer(serializers.Serializer):
    """The form fields of POST /v1/files (the `file` part is streamed to disk)."""

    purpose = serializers.ChoiceField(choices=[File.Purpose.BATCH])
    file = serializers.FileField(required=False, help_text="The JSONL input (multipart part).")


class FileListQuerySerializer(serializers.Serializer):
    purpose = serializers.ChoiceField(choices=File.Purpose.values, required=False)
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    after = serializers.CharField(required=False, max_length=40)


class BatchListQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(required=False, default=20, min_value=1, max_value=100)
    after = serializers.CharField(required=False, max_length=40)


class OpenAIBatchCreateSerializer(serializers.Serializer):
    input_file_id = StrictCharField(max_length=40)
    endpoint = StrictCharField(max_length=100, help_text="Only /v1/chat/completions.")
    completion_window = serializers.ChoiceField(choices=["24h"])
    metadata = serializers.JSONField(required=False, allow_null=True)

    def validate_metadata(self, value: Any) -> dict[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
            raise serializers.ValidationError(
                f"must be an object of at most {MAX_METADATA_KEYS} string pairs."
            )
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS or not isinstance(item, str):
                raise serializers.ValidationError(
                    f"keys are at most {MAX_METADATA_KEY_CHARS} characters; values are strings."
                )
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise serializers.ValidationError(
                    f"values are at most {MAX_METADATA_VALUE_CHARS} characters."
                )
        return value


class FileObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    bytes = StrictIntegerField()
    created_at = serializers.IntegerField()
    filename = serializers.CharField()
    purpose = serializers.CharField()
    status = serializers.CharField()


class FileDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


class OpenAIBatchCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    endpoint = serializers.CharField()
    errors = serializers.JSONField(allow_null=True)
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["validating", "in_progress", "finalizing", "completed", "failed", "cancelled"]
    )
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField()
    in_progress_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    completed_at = serializers.IntegerField(allow_null=True)
    failed_at = serializers.IntegerField(allow_null=True)
    cancelled_at = serializers.IntegerField(allow_null=True)
    request_counts = OpenAIBatchCountsSerializer()
    metadata = serializers.JSONField(allow_null=True)
    tokenflow = serializers.JSONField(help_text="{job_id, status}: the batch engine's job.")


class PageSerializer(serializers.Serializer):
    object = serializers.CharField()
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()
