"""Every compression, with its original and compressed text."""

from django.db import models
from django.db.models import Q


class Compression(models.Model):
    prompt = models.ForeignKey(
        "routing.Prompt",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="compressions",
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    original_text = models.TextField()
    compressed_text = models.TextField()
    original_tokens = models.PositiveIntegerField()
    compressed_tokens = models.PositiveIntegerField()
    requested_ratio = models.FloatField(null=True, blank=True)
    target_tokens = models.PositiveIntegerField(null=True, blank=True)
    ratio = models.FloatField(help_text="compressed_tokens / original_tokens")
    question = models.TextField(blank=True)
    instruction = models.TextField(blank=True)
    force_tokens = models.JSONField(default=list, blank=True)
    engine = models.CharField(max_length=100)
    model_name = models.CharField(max_length=300, blank=True)
    skipped = models.BooleanField(default=False, help_text="Below the minimum length: unchanged.")
    duration_ms = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(requested_ratio__isnull=True)
                | (Q(requested_ratio__gt=0) & Q(requested_ratio__lte=1)),
                name="compression_requested_ratio_range",
            ),
            models.CheckConstraint(
                condition=Q(compressed_tokens__lte=models.F("original_tokens")),
                name="compression_not_longer",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.original_tokens}->{self.compressed_tokens} ({self.engine})"
