"""Hourly rollups behind the dashboard (docs/pages.md, "Rollups").

A closed hour is aggregated once its rows are final (no queued or streaming generation
left in it): `RolledHour` marks it, `GenerationHour` holds one row per (hour, model,
status), `ClassificationHour` one per (hour, top category), `CompressionHour` one per hour.
An hour without a `RolledHour` (the current one, or one still holding in-flight rows) is
read from the raw rows. Rolling an hour again replaces its rows (idempotent).
"""

from django.db import models


class RolledHour(models.Model):
    """An hour whose aggregates are in the rollup tables (possibly none: an empty hour)."""

    hour = models.DateTimeField(unique=True, help_text="Start of the hour (UTC).")
    rolled_at = models.DateTimeField()
    generations = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00}"


class GenerationHour(models.Model):
    """Generations created in one hour on one model with one final status.

    Histograms are sparse `{bin: count}` maps over web.selectors.BIN_EDGES (log-scale bins
    15 % wide), so percentiles from the rollup are the raw path's, bin for bin."""

    hour = models.DateTimeField()
    model_name = models.CharField(max_length=200)
    status = models.CharField(max_length=20)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    cost_saved_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    cache_exact = models.PositiveIntegerField(default=0)
    cache_semantic = models.PositiveIntegerField(default=0)
    ttft_count = models.PositiveIntegerField(default=0)
    ttft_sum_ms = models.FloatField(default=0)
    duration_count = models.PositiveIntegerField(default=0)
    duration_sum_ms = models.FloatField(default=0)
    ttft_histogram = models.JSONField(default=dict)
    duration_histogram = models.JSONField(default=dict)
    categories = models.JSONField(
        default=dict, help_text="Routed generations per classification top category."
    )

    class Meta:
        ordering = ["-hour", "model_name", "status"]
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "model_name", "status"], name="generation_hour_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.model_name} {self.status}"


class ClassificationHour(models.Model):
    hour = models.DateTimeField()
    top_category = models.CharField(max_length=100)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-hour", "top_category"]
        constraints = [
            models.UniqueConstraint(fields=["hour", "top_category"], name="classification_hour_key")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.top_category}"


class CompressionHour(models.Model):
    hour = models.DateTimeField(unique=True)
    count = models.PositiveIntegerField(default=0)
    original_tokens = models.BigIntegerField(default=0)
    compressed_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00}"
