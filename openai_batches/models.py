"""Files uploaded through /v1/files (stored on disk) and the OpenAI face of a batch job."""

from django.db import models


class File(models.Model):
    """A file on disk under TOKENFLOW_FILES_DIR: an uploaded batch input, or an output or
    error file produced from a finished job's results."""

    class Purpose(models.TextChoices):
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"

    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    purpose = models.CharField(max_length=20, choices=Purpose.choices, db_index=True)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    path = models.CharField(max_length=255, help_text="Relative to TOKENFLOW_FILES_DIR.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"file-{self.pk} {self.filename}"

    @property
    def public_id(self) -> str:
        return f"file-{self.pk}"


class OpenAIBatch(models.Model):
    """A BatchJob created through POST /v1/batches, with what OpenAI's batch object adds:
    the input file, endpoint, window, metadata and the output / error files."""

    job = models.OneToOneField(
        "batches.BatchJob", on_delete=models.CASCADE, related_name="openai_batch"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    input_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="batches"
    )
    input_file_key = models.CharField(max_length=40, help_text="file-<id>, kept if deleted.")
    endpoint = models.CharField(max_length=100)
    completion_window = models.CharField(max_length=10, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    output_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    finalized_at = models.DateTimeField(
        null=True, blank=True, help_text="When the output and error files were produced."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "OpenAI batch"

    def __str__(self) -> str:
        return f"batch_{self.pk} (job #{self.job_id})"

    @property
    def public_id(self) -> str:
        return f"batch_{self.pk}"
