from django.contrib import admin

from routing.models import (
    CategoryRoute,
    Classification,
    Embedding,
    Generation,
    ModelRanking,
    Prompt,
)


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
        "input_price_per_mtok",
        "output_price_per_mtok",
        "context_window",
        "supports_chat",
        "supports_tools",
        "supports_json_object",
        "supports_json_schema",
        "supports_vision",
        "supports_embeddings",
        "updated_at",
    ]
    list_editable = [
        "rank",
        "enabled",
        "supports_chat",
        "supports_tools",
        "supports_json_object",
        "supports_json_schema",
        "supports_vision",
        "supports_embeddings",
    ]
    list_filter = [
        "provider",
        "enabled",
        "supports_chat",
        "supports_tools",
        "supports_json_schema",
        "supports_vision",
        "supports_embeddings",
    ]
    search_fields = ["name", "upstream_model", "description"]
    date_hierarchy = "created_at"
    inlines = [CategoryRouteInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "provider",
                    "upstream_model",
                    "base_url",
                    "api_key_env",
                    "rank",
                    "enabled",
                    "description",
                ]
            },
        ),
        (
            "Capabilities",
            {
                "description": "A request needing a capability the model lacks is refused "
                '(400); model "auto" skips the model.',
                "fields": [
                    "supports_chat",
                    "supports_tools",
                    "supports_json_object",
                    "supports_json_schema",
                    "supports_vision",
                    "supports_embeddings",
                    "passthrough_fields",
                ],
            },
        ),
        (
            "Prices and limits",
            {"fields": ["input_price_per_mtok", "output_price_per_mtok", "context_window"]},
        ),
        ("Provider options", {"fields": ["options"]}),
    ]


@admin.register(CategoryRoute)
class CategoryRouteAdmin(admin.ModelAdmin):
    list_display = ["category", "model", "priority", "enabled", "description", "updated_at"]
    list_editable = ["priority", "enabled"]
    list_filter = ["category", "enabled", "model__provider"]
    search_fields = ["category", "description", "model__name"]
    list_select_related = ["model"]
    date_hierarchy = "created_at"


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    list_display = ["id", "short_text", "source", "api_key", "created_at"]
    list_filter = ["source", "created_at"]
    search_fields = ["text", "sha256"]
    date_hierarchy = "created_at"

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text[:100]


@admin.register(Classification)
class ClassificationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "top_category",
        "confidence",
        "engine",
        "multi_label",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["top_category", "engine", "multi_label", "created_at"]
    search_fields = ["prompt__text", "top_category"]
    date_hierarchy = "created_at"


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "model_name",
        "provider",
        "transport",
        "status",
        "finish_reason",
        "tool_call_count",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["status", "provider", "model_name", "transport", "finish_reason", "created_at"]
    search_fields = ["output_text", "prompt__text", "model_name", "error_message"]
    date_hierarchy = "created_at"
    list_select_related = ["prompt"]
    fieldsets = [
        (None, {"fields": ["status", "model_name", "provider", "upstream_model", "transport"]}),
        ("Input", {"fields": ["prompt", "input_messages", "parameters", "options"]}),
        (
            "Output",
            {
                "fields": [
                    "output_text",
                    "tool_calls",
                    "finish_reason",
                    "error_code",
                    "error_message",
                ]
            },
        ),
        (
            "Usage and timings",
            {
                "fields": [
                    "prompt_tokens",
                    "completion_tokens",
                    "ttft_ms",
                    "duration_ms",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "attempts",
                ]
            },
        ),
        ("Links", {"fields": ["api_key", "model", "classification", "compression"]}),
    ]

    @admin.display(description="tool calls")
    def tool_call_count(self, obj):
        return len(obj.tool_calls or [])


@admin.register(Embedding)
class EmbeddingAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "model_name",
        "provider",
        "status",
        "input_count",
        "dimensions",
        "prompt_tokens",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["status", "provider", "model_name", "created_at"]
    search_fields = ["model_name", "error_message"]
    date_hierarchy = "created_at"
