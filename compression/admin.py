from django.contrib import admin
from django.utils.html import format_html

from compression.models import Compression
from web.admin_display import (
    TimingColumns,
    admin_link,
    changelist_link,
    percent,
    tokens,
    truncated,
)


@admin.register(Compression)
class CompressionAdmin(TimingColumns, admin.ModelAdmin):
    list_display = [
        "id",
        "short_text",
        "engine",
        "tokens_before",
        "tokens_after",
        "saved",
        "requested",
        "skipped",
        "duration",
        "prompt_link",
        "created_at",
    ]
    list_filter = ["engine", "skipped", "created_at"]
    search_fields = ["original_text", "compressed_text", "question"]
    date_hierarchy = "created_at"
    list_select_related = ["prompt"]
    readonly_fields = ["side_by_side", "prompt_link", "generations_link"]
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

    @admin.display(description="text")
    def short_text(self, obj):
        return truncated(obj.original_text, 60)

    @admin.display(description="before", ordering="original_tokens")
    def tokens_before(self, obj):
        return tokens(obj.original_tokens)

    @admin.display(description="after", ordering="compressed_tokens")
    def tokens_after(self, obj):
        return tokens(obj.compressed_tokens)

    @admin.display(description="saved", ordering="ratio")
    def saved(self, obj):
        return percent(1 - obj.ratio)

    @admin.display(description="requested", ordering="requested_ratio")
    def requested(self, obj):
        return percent(obj.requested_ratio, 0)

    @admin.display(description="prompt")
    def prompt_link(self, obj):
        return admin_link("routing.prompt", obj.prompt_id)

    @admin.display(description="generations")
    def generations_link(self, obj):
        return changelist_link(
            "routing.generation", f"compression__id__exact={obj.pk}", "generations that used it"
        )
