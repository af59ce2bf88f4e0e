from django.contrib import admin, messages

from accounts.models import ApiKey
from routing.services.spend import budget_spent, has_budget
from web.admin_display import usd


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "user",
        "requests_per_minute",
        "tokens_per_minute",
        "batch_max_active_jobs",
        "batch_max_concurrency",
        "budget",
        "spent",
        "soft_budget_crossed_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "prefix",
        "spent",
        "soft_budget_crossed_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke_keys"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw = ApiKey.issue(
            name=obj.name,
            user=obj.user,
            requests_per_minute=obj.requests_per_minute,
            tokens_per_minute=obj.tokens_per_minute,
            batch_max_active_jobs=obj.batch_max_active_jobs,
            batch_max_concurrency=obj.batch_max_concurrency,
            max_budget_usd=obj.max_budget_usd,
            budget_period=obj.budget_period,
            soft_budget_usd=obj.soft_budget_usd,
        )
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        self.message_user(request, f"New key (shown once): {raw}", messages.WARNING)

    @admin.display(description="budget (USD)", ordering="max_budget_usd")
    def budget(self, obj):
        if obj.max_budget_usd is None:
            return usd(None)
        return f"{usd(obj.max_budget_usd)} / {obj.budget_period}"

    @admin.display(description="spent this period (USD)")
    def spent(self, obj):
        if obj.pk is None or not has_budget(obj):
            return usd(None)
        return usd(budget_spent(api_key=obj))

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        for key in queryset.active():
            key.revoke()
