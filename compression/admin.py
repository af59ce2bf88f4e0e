from django.contrib import admin
from django.utils.html import format_html

from compression.models import Compression


@admin.register(Compression)
class CompressionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "engine",
        "original_tokens",
        "compressed_tokens",
        "ratio",
        "requested_ratio",
        "skipped",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["engine", "skipped", "created_at"]
    search_fields = ["original_text", "compressed_text", "question"]
    date_hierarchy = "created_at"
    readonly_fields = ["side_by_side"]
    exclude = ["original_text", "compressed_text"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Original | compressed")
    def side_by_side(self, obj):
        return format_html(
            '<div style="display:flex;gap:1em"><pre style="white-space:pre-wrap;flex:1">{}</pre>'
            '<pre style="white-space:pre-wrap;flex:1">{}</pre></div>',
            obj.original_text,
            obj.compressed_text,
        )
