from django.apps import AppConfig


class OpenAIBatchesConfig(AppConfig):
    """OpenAI's Files and Batch API (/v1/files, /v1/batches) over the batch engine."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "openai_batches"
    verbose_name = "OpenAI files and batches"
