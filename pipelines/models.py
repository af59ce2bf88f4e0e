"""Fan-out pipelines (agents + aggregator), conversations and the runs that executed them."""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

DEFAULT_AGGREGATOR_PROMPT = """You combine several expert answers into one reply.

User message:
{message}

Answers from the experts:
{answers}

{missing}

Write one clear, concise answer for the user that uses the experts' points."""


class Pipeline(models.Model):
    """A staff-managed fan-out: every enabled agent answers, then the aggregator combines."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    aggregator_model = models.ForeignKey(
        "routing.ModelRanking", on_delete=models.PROTECT, related_name="aggregating_pipelines"
    )
    aggregator_system_prompt = models.TextField(blank=True)
    aggregator_prompt = models.TextField(
        default=DEFAULT_AGGREGATOR_PROMPT,
        help_text="Placeholders: {message}, {answers} (one block per agent), {missing} "
        "(which perspectives failed; empty when none did).",
    )
    aggregator_temperature = models.FloatField(null=True, blank=True)
    aggregator_max_tokens = models.PositiveIntegerField(null=True, blank=True)
    deadline_seconds = models.FloatField(
        default=120, help_text="Overall deadline for agents plus aggregator."
    )
    history_turns = models.PositiveIntegerField(
        default=5, help_text="Previous conversation turns passed to the agents."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(deadline_seconds__gt=0), name="pipeline_deadline_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    """One perspective of a pipeline: a model with its own system prompt and timeout."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="agents")
    name = models.SlugField(max_length=100)
    model = models.ForeignKey(
        "routing.ModelRanking", on_delete=models.PROTECT, related_name="agents"
    )
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    timeout_seconds = models.FloatField(default=60)
    order = models.PositiveIntegerField(default=0)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["pipeline", "order", "name"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "name"], name="agent_pipeline_name_unique"),
            models.CheckConstraint(
                condition=Q(timeout_seconds__gt=0), name="agent_timeout_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.name}"


class Conversation(models.Model):
    """Groups runs; `external_id` is the client's conversation_id (unique per API key)."""

    external_id = models.CharField(max_length=100, default="", blank=True)
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "external_id"], name="conversation_key_external_unique"
            ),
            models.UniqueConstraint(
                fields=["external_id"],
                condition=Q(api_key__isnull=True),
                name="conversation_external_unique_without_key",
            ),
        ]

    def __str__(self) -> str:
        return self.external_id

    def save(self, *args, **kwargs):
        if not self.external_id:
            self.external_id = uuid.uuid4().hex
        super().save(*args, **kwargs)


class PipelineRun(models.Model):
    """One /api/process call: the message, each agent's Generation and the aggregator's."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="runs")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message_id = models.CharField(max_length=200)
    message = models.TextField()
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    transport = models.CharField(max_length=20, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True
    )
    aggregator_generation = models.ForeignKey(
        "routing.Generation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    answer = models.TextField(blank=True)
    missing = models.JSONField(default=list, blank=True, help_text="Agents that failed.")
    agents_ms = models.FloatField(null=True, blank=True, help_text="Until the last agent ended.")
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Until the first answer token.")
    duration_ms = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "message_id"], name="run_key_message_unique"
            ),
            models.UniqueConstraint(
                fields=["message_id"],
                condition=Q(api_key__isnull=True),
                name="run_message_unique_without_key",
            ),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.pipeline} {self.status}"


class RunAgent(models.Model):
    """The link between a run, one agent and the Generation it produced."""

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="agent_runs")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL)
    agent_name = models.CharField(max_length=100)
    generation = models.ForeignKey(
        "routing.Generation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    duration_ms = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "order", "agent_name"]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.agent_name} {self.status}"
