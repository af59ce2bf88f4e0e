"""The shapes of the fan-out API: the `/api/process` request (HTTP and WebSocket validate
with the same serializer) and the run read back by `GET /api/process/<id>`."""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from pipelines.events import agent_model_name
from pipelines.models import PipelineRun, RunAgent
from routing.models import Generation
from tokenflow_site.api import LargeTextField, StrictBooleanField, StrictCharField

# --- request -----------------------------------------------------------------------------


class IdField(StrictCharField):
    """A client-chosen id: a string, or an integer taken as its decimal string (clients
    often send numeric message ids); trimmed, non-empty."""

    def to_internal_value(self, data):
        if isinstance(data, int) and not isinstance(data, bool):
            data = str(data)
        return super().to_internal_value(data)


class IdFieldSchema(OpenApiSerializerFieldExtension):
    """OpenAPI: `IdField` accepts a string or an integer (so a fuzzer sending 12 expects 200)."""

    target_class = IdField

    def map_serializer_field(self, auto_schema, direction):
        schema: dict[str, Any] = {
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": self.target.max_length},
                {"type": "integer"},
            ]
        }
        if self.target.allow_null:
            schema["nullable"] = True
        return schema


class ProcessRequestSerializer(serializers.Serializer):
    """The body of `POST /api/process` and of a `{"type": "process"}` WebSocket message."""

    message = LargeTextField(
        max_chars=lambda: settings.TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS,
        trim_whitespace=False,  # the message is stored and sent to the agents as written
        help_text="The user's message (413 `input_too_large` beyond "
        "TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS).",
    )
    message_id = IdField(
        max_length=200,
        help_text="Idempotency key, unique per API key: a repeat replays the stored run.",
    )
    pipeline = IdField(
        max_length=100,
        required=False,
        allow_null=True,
        help_text="Pipeline name; default TOKENFLOW_DEFAULT_PIPELINE.",
    )
    conversation_id = IdField(
        max_length=100,
        required=False,
        allow_null=True,
        help_text="Continue a conversation (its previous turns go to the agents); "
        "omitted: a new conversation, whose id comes back in `metadata`.",
    )
    stream_agents = StrictBooleanField(
        required=False,
        default=False,
        help_text="Also stream each agent's answer as it is generated (`agent_delta` events "
        "`{agent, generation_id, text}` before its `agent_done`); off by default.",
    )

    def validate_message(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("must not be empty.", code="blank")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {
            **attrs,
            "pipeline": attrs.get("pipeline") or settings.TOKENFLOW_DEFAULT_PIPELINE,
            "conversation_id": attrs.get("conversation_id"),
        }


# --- read-back ---------------------------------------------------------------------------


class RunAgentSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="agent_name")
    model = serializers.SerializerMethodField()
    text = serializers.SerializerMethodField()
    error_code = serializers.CharField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)

    class Meta:
        model = RunAgent
        fields = [
            "name",
            "status",
            "model",
            "generation_id",
            "text",
            "duration_ms",
            "error_code",
            "error_message",
        ]

    def get_model(self, link: RunAgent) -> str | None:
        return agent_model_name(link)

    def get_text(self, link: RunAgent) -> str:
        return link.generation.output_text if link.generation else ""

    def to_representation(self, link: RunAgent) -> dict[str, Any]:
        data = super().to_representation(link)
        data["error_code"] = data["error_code"] or None
        data["error_message"] = data["error_message"] or None
        return data


class RunAggregatorSerializer(serializers.ModelSerializer):
    generation_id = serializers.IntegerField(source="pk")
    model = serializers.CharField(source="model_name")

    class Meta:
        model = Generation
        fields = ["generation_id", "model", "status", "prompt_tokens", "completion_tokens"]


class RunErrorSerializer(serializers.Serializer):
    code = serializers.CharField(source="error_code")
    message = serializers.CharField(source="error_message")


class RunSerializer(serializers.ModelSerializer):
    """`GET /api/process/<id>`: a run with its agents' and aggregator's generations."""

    pipeline = serializers.CharField(source="pipeline.name")
    conversation_id = serializers.CharField(
        source="conversation.external_id", allow_null=True, default=None
    )
    missing = serializers.ListField(child=serializers.CharField(), help_text="Failed agents.")
    agents = RunAgentSerializer(source="agent_runs", many=True)
    aggregator = RunAggregatorSerializer(source="aggregator_generation", allow_null=True)
    error = serializers.SerializerMethodField()
    cost_usd = serializers.SerializerMethodField(help_text="USD of the run's generations.")

    class Meta:
        model = PipelineRun
        fields = [
            "id",
            "pipeline",
            "message_id",
            "message",
            "conversation_id",
            "status",
            "answer",
            "missing",
            "agents",
            "aggregator",
            "agents_ms",
            "ttft_ms",
            "duration_ms",
            "cost_usd",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_cost_usd(self, run: PipelineRun) -> float:
        from pipelines.events import run_cost

        return run_cost(run)

    @extend_schema_field(RunErrorSerializer(allow_null=True))
    def get_error(self, run: PipelineRun) -> dict[str, str] | None:
        return RunErrorSerializer(run).data if run.error_code else None
