from django.contrib import admin
from django.utils.html import format_html_join

from routing.models import CategoryRoute, Classification, Generation, ModelRanking, Prompt
from web.admin_display import admin_link, changelist_link, ms, percent, tokens, truncated


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: viewable and deletable, never edited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class CategoryRouteInline(admin.TabularInline):
    model = CategoryRoute
    extra = 0
    fields = ["category", "description", "priority", "enabled"]


@admin.register(ModelRanking)
class ModelRankingAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "provider",
        "upstream_model",
        "rank",
        "enabled",
        "input_price",
        "output_price",
        "context",
        "updated_at",
    ]
    list_editable = ["rank", "enabled"]
    list_filter = ["provider", "enabled"]
    search_fields = ["name", "upstream_model", "description"]
    date_hierarchy = "created_at"
    inlines = [CategoryRouteInline]

    @admin.display(description="input", ordering="input_price_per_mtok")
    def input_price(self, obj):
        return f"${obj.input_price_per_mtok:.2f} / Mtok"

    @admin.display(description="output", ordering="output_price_per_mtok")
    def output_price(self, obj):
        return f"${obj.output_price_per_mtok:.2f} / Mtok"

    @admin.display(description="context", ordering="context_window")
    def context(self, obj):
        return tokens(obj.context_window)


@admin.register(CategoryRoute)
class CategoryRouteAdmin(admin.ModelAdmin):
    list_display = ["category", "model", "priority", "enabled", "short_description", "updated_at"]
    list_editable = ["priority", "enabled"]
    list_filter = ["category", "enabled", "model__provider"]
    search_fields = ["category", "description", "model__name"]
    list_select_related = ["model"]
    date_hierarchy = "created_at"

    @admin.display(description="description")
    def short_description(self, obj):
        return truncated(obj.description, 70)


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    list_display = ["id", "short_text", "source", "api_key", "created_at"]
    list_filter = ["source", "created_at"]
    search_fields = ["text", "sha256"]
    date_hierarchy = "created_at"
    readonly_fields = ["related"]

    @admin.display(description="text")
    def short_text(self, obj):
        return truncated(obj.text, 100)

    @admin.display(description="related records")
    def related(self, obj):
        query = f"prompt__id__exact={obj.pk}"
        links = [
            changelist_link("routing.generation", query, "generations"),
            changelist_link("routing.classification", query, "classifications"),
            changelist_link("compression.compression", query, "compressions"),
        ]
        return format_html_join(" · ", "{}", ((link,) for link in links))


@admin.register(Classification)
class ClassificationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "top_category",
        "confidence_pct",
        "short_prompt",
        "engine",
        "multi_label",
        "duration",
        "created_at",
    ]
    list_filter = ["top_category", "engine", "multi_label", "created_at"]
    search_fields = ["prompt__text", "top_category"]
    date_hierarchy = "created_at"
    list_select_related = ["prompt"]
    readonly_fields = ["prompt_link", "generations_link"]

    @admin.display(description="confidence", ordering="confidence")
    def confidence_pct(self, obj):
        return percent(obj.confidence)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return ms(obj.duration_ms)

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return truncated(obj.prompt.text if obj.prompt else "", 70)

    @admin.display(description="prompt")
    def prompt_link(self, obj):
        return admin_link("routing.prompt", obj.prompt_id, truncated(str(obj.prompt or ""), 80))

    @admin.display(description="generations")
    def generations_link(self, obj):
        return changelist_link(
            "routing.generation", f"classification__id__exact={obj.pk}", "generations it routed"
        )


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "model_name",
        "transport",
        "status",
        "short_prompt",
        "tokens_in",
        "tokens_out",
        "ttft",
        "duration",
        "links",
        "created_at",
    ]
    list_filter = ["status", "provider", "model_name", "transport", "finish_reason", "created_at"]
    search_fields = ["output_text", "prompt__text", "model_name", "error_message"]
    date_hierarchy = "created_at"
    list_select_related = ["prompt"]
    readonly_fields = ["ttft", "duration", "tokens_in", "tokens_out", "links"]
    fieldsets = [
        (None, {"fields": ["status", "model_name", "provider", "upstream_model", "transport"]}),
        ("Input", {"fields": ["prompt", "input_messages", "parameters"]}),
        ("Output", {"fields": ["output_text", "finish_reason", "error_code", "error_message"]}),
        (
            "Usage and timings",
            {
                "fields": [
                    "tokens_in",
                    "tokens_out",
                    "ttft",
                    "duration",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "attempts",
                ]
            },
        ),
        ("Links", {"fields": ["links", "api_key", "model"]}),
    ]

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return truncated(obj.prompt.text if obj.prompt else "", 60)

    @admin.display(description="in", ordering="prompt_tokens")
    def tokens_in(self, obj):
        return tokens(obj.prompt_tokens)

    @admin.display(description="out", ordering="completion_tokens")
    def tokens_out(self, obj):
        return tokens(obj.completion_tokens)

    @admin.display(description="TTFT", ordering="ttft_ms")
    def ttft(self, obj):
        return ms(obj.ttft_ms)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return ms(obj.duration_ms)

    @admin.display(description="related")
    def links(self, obj):
        parts = [
            admin_link("routing.prompt", obj.prompt_id, "prompt") if obj.prompt_id else None,
            admin_link("routing.classification", obj.classification_id, "classification")
            if obj.classification_id
            else None,
            admin_link("compression.compression", obj.compression_id, "compression")
            if obj.compression_id
            else None,
        ]
        return format_html_join(" · ", "{}", ((p,) for p in parts if p)) or "–"
