from django.contrib import admin

from openai_batches.models import File, OpenAIBatch


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "purpose", "bytes", "api_key", "created_at"]
    list_filter = ["purpose", "created_at"]
    search_fields = ["filename", "sha256"]
    readonly_fields = ["api_key", "purpose", "filename", "bytes", "sha256", "path", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(OpenAIBatch)
class OpenAIBatchAdmin(admin.ModelAdmin):
    """Pause / resume / cancel live on the batch job's own admin page."""

    list_display = [
        "id",
        "job",
        "endpoint",
        "input_file",
        "output_file",
        "error_file",
        "created_at",
    ]
    list_select_related = ["job", "input_file", "output_file", "error_file"]
    readonly_fields = [
        "job",
        "api_key",
        "input_file",
        "input_file_key",
        "endpoint",
        "completion_window",
        "metadata",
        "output_file",
        "error_file",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False
