from django.contrib import admin, messages

from response_cache.models import CacheEntry
from response_cache.services import cache_purge
from web.admin_display import admin_link, truncated


class ExpiredFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("live", "live"), ("expired", "expired")]

    def queryset(self, request, queryset):
        if self.value() == "live":
            return queryset.live()
        if self.value() == "expired":
            return queryset.expired()
        return queryset


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    """Stored answers: searchable, purgeable (selected, a model's, or every expired one);
    never edited (a changed answer would be served as the model's)."""

    list_display = [
        "id",
        "model_name",
        "api_key",
        "short_query",
        "short_response",
        "semantic",
        "hits",
        "last_hit_at",
        "created_at",
        "expires_at",
        "is_live",
    ]
    list_filter = [ExpiredFilter, "model_name", "created_at"]
    search_fields = ["query_text", "response_text", "model_name", "exact_key"]
    date_hierarchy = "created_at"
    list_select_related = ["api_key"]
    exclude = ["embedding"]
    readonly_fields = ["source"]
    actions = ["purge_selected", "purge_models", "purge_expired"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # purge_selected says what it does
        return actions

    @admin.display(description="query")
    def short_query(self, obj: CacheEntry) -> str:
        return truncated(obj.query_text, 60)

    @admin.display(description="response")
    def short_response(self, obj: CacheEntry) -> str:
        return truncated(obj.response_text, 60)

    @admin.display(description="semantic", boolean=True)
    def semantic(self, obj: CacheEntry) -> bool:
        return obj.embedding is not None

    @admin.display(description="live", boolean=True)
    def is_live(self, obj: CacheEntry) -> bool:
        return not obj.expired

    @admin.display(description="generation")
    def source(self, obj: CacheEntry) -> str:
        return admin_link("routing.generation", obj.generation_id)

    @admin.action(description="Purge the selected entries", permissions=["delete"])
    def purge_selected(self, request, queryset):
        deleted = queryset.delete()[0]
        self.message_user(request, f"Purged {deleted} cache entries.", messages.SUCCESS)

    @admin.action(
        description="Purge every entry of the selected entries' models", permissions=["delete"]
    )
    def purge_models(self, request, queryset):
        deleted = 0
        for model in {entry.model for entry in queryset.select_related("model")}:
            deleted += cache_purge(model=model)
        self.message_user(request, f"Purged {deleted} cache entries.", messages.SUCCESS)

    @admin.action(
        description="Purge every expired entry (whatever is selected)", permissions=["delete"]
    )
    def purge_expired(self, request, queryset):
        deleted = cache_purge(expired_only=True)
        self.message_user(request, f"Purged {deleted} expired cache entries.", messages.SUCCESS)
