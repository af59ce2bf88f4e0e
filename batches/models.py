"""Batch jobs: a job owns items (one request each); every try of an item is an attempt."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


class BatchJob(models.Model):
    """A set of chat requests run by batch workers with a per-job concurrency and retry policy."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PAUSING = "pausing"
        PAUSED = "paused"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    ACTIVE = (Status.PENDING, Status.RUNNING)
    TERMINAL = (Status.COMPLETED, Status.CANCELLED, Status.FAILED)

    name = models.CharField(max_length=200, blank=True, db_index=True)
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model = models.CharField(
        max_length=200, blank=True, help_text="Default model name for items, or 'auto'."
    )
    prompt_template = models.TextField(
        blank=True, help_text="str.format template rendered with an item's 'variables'."
    )
    parameters = models.JSONField(default=dict, blank=True, help_text="Default sampling params.")
    concurrency = models.PositiveIntegerField(default=16)
    max_attempts = models.PositiveIntegerField(default=3)
    retry_policy = models.JSONField(
        default=dict,
        blank=True,
        help_text="retry_statuses, backoff_base, backoff_max, timeout (seconds).",
    )
    handler = models.CharField(
        max_length=300, blank=True, help_text="Dotted path of a custom policy hook."
    )
    executor = models.CharField(
        max_length=300,
        blank=True,
        help_text="'' = the model's provider; a dotted path = a request function; "
        "'local:<id>' = a function only the creating Python process has.",
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    total_items = models.PositiveIntegerField(default=0)
    statistics = models.JSONField(default=dict, blank=True, help_text="Snapshot when finished.")
    pause_reason = models.CharField(
        max_length=300,
        blank=True,
        help_text="Why the system paused the job (e.g. budget_exceeded); cleared on resume.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(concurrency__gt=0), name="batch_concurrency_pos"),
            models.CheckConstraint(condition=Q(max_attempts__gt=0), name="batch_attempts_pos"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name or 'batch'} ({self.status})"

    def clean(self) -> None:
        """What the admin may save: allowlisted hooks, a bounded retry policy, a plain
        template (the API checks the same through its serializers)."""
        from batches.policy import hook_allowed
        from batches.serializers import RetryPolicySerializer
        from batches.templates import template_parse
        from tokenflow_site.errors import ApiError

        errors: dict[str, str] = {}
        for name, executor in (("handler", False), ("executor", True)):
            if not hook_allowed(getattr(self, name), executor=executor):
                errors[name] = (
                    f"{getattr(self, name)!r} is not allowed: list it in TOKENFLOW_BATCH_HANDLERS."
                )
        policy = RetryPolicySerializer(data=self.retry_policy)
        if not policy.is_valid():
            errors["retry_policy"] = f"Invalid retry policy: {policy.errors}."
        if self.prompt_template:
            try:
                template_parse(self.prompt_template)
            except ApiError as exc:
                errors["prompt_template"] = exc.message
        if errors:
            raise ValidationError(errors)


class BatchItem(models.Model):
    """One request of a job. `lease_*` say which worker runs it and until when."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    # No separate FK index: UNIQUE(job, custom_id) and the claim index start with job.
    job = models.ForeignKey(
        BatchJob, on_delete=models.CASCADE, related_name="items", db_index=False
    )
    custom_id = models.CharField(max_length=200)
    params = models.JSONField(help_text="The request body: model, messages, sampling params.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    model_name = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(
        max_digits=16,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="What the item's attempts cost (USD).",
    )
    available_at = models.DateTimeField(null=True, blank=True, help_text="Retry backoff.")
    lease_token = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "custom_id"], name="batch_item_custom_id_unique")
        ]
        indexes = [models.Index(fields=["job", "status", "id"], name="batch_item_claim")]

    def __str__(self) -> str:
        return f"{self.custom_id} ({self.status})"


class BatchAttempt(models.Model):
    """One upstream call of an item: what was sent and what came back (the trajectory)."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    # No separate FK index: UNIQUE(item, number) serves lookups by item (one index per insert).
    item = models.ForeignKey(
        BatchItem, on_delete=models.CASCADE, related_name="attempt_set", db_index=False
    )
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    request = models.JSONField(default=dict)
    model_name = models.CharField(max_length=200, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    retryable = models.BooleanField(default=False)
    latency_ms = models.FloatField(default=0)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(
        max_digits=16, decimal_places=10, null=True, blank=True, help_text="USD."
    )
    worker = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["item", "number"]
        constraints = [
            models.UniqueConstraint(fields=["item", "number"], name="batch_attempt_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.item_id}#{self.number} {self.status}"
