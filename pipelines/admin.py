from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from pipelines.models import Agent, Conversation, Pipeline, PipelineRun, RunAgent
from web.admin_display import TimingColumns, ms, truncated


def _generation_link(generation_id: int | None) -> str:
    if not generation_id:
        return "-"
    url = reverse("admin:routing_generation_change", args=[generation_id])
    return format_html('<a href="{}">generation #{}</a>', url, generation_id)


class AgentInline(admin.StackedInline):
    model = Agent
    extra = 0
    fields = [
        ("name", "model", "enabled", "order"),
        "system_prompt",
        ("temperature", "max_tokens", "timeout_seconds"),
    ]


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "aggregator_model", "agent_count", "deadline_seconds"]
    list_editable = ["enabled"]
    list_filter = ["enabled", "aggregator_model"]
    search_fields = ["name", "description", "agents__name"]
    inlines = [AgentInline]
    fieldsets = [
        (None, {"fields": ["name", "description", "enabled", "deadline_seconds", "history_turns"]}),
        (
            "Aggregator",
            {
                "fields": [
                    "aggregator_model",
                    "aggregator_system_prompt",
                    "aggregator_prompt",
                    ("aggregator_temperature", "aggregator_max_tokens"),
                ]
            },
        ),
    ]

    @admin.display(description="agents")
    def agent_count(self, obj):
        return obj.agents.filter(enabled=True).count()


class RunAgentInline(admin.TabularInline):
    model = RunAgent
    extra = 0
    can_delete = False
    fields = ["agent_name", "status", "generation_link", "duration_ms", "error_code"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="generation")
    def generation_link(self, obj):
        return _generation_link(obj.generation_id)


@admin.register(PipelineRun)
class PipelineRunAdmin(TimingColumns, admin.ModelAdmin):
    """Runs are records of what happened: read-only, with links to every generation."""

    list_display = [
        "id",
        "pipeline",
        "message_id",
        "status",
        "short_message",
        "missing",
        "agents",
        "ttft",
        "duration",
        "created_at",
    ]
    list_filter = ["status", "pipeline", "transport", "created_at"]
    search_fields = ["message_id", "message", "answer", "conversation__external_id"]
    date_hierarchy = "created_at"
    list_select_related = ["pipeline"]
    inlines = [RunAgentInline]
    readonly_fields = ["aggregator_link", "conversation_link"]
    exclude = ["aggregator_generation", "conversation"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="message")
    def short_message(self, obj):
        return truncated(obj.message, 60)

    @admin.display(description="agents", ordering="agents_ms")
    def agents(self, obj):
        return ms(obj.agents_ms)

    @admin.display(description="aggregator")
    def aggregator_link(self, obj):
        return _generation_link(obj.aggregator_generation_id)

    @admin.display(description="conversation")
    def conversation_link(self, obj):
        if not obj.conversation_id:
            return "-"
        url = reverse("admin:pipelines_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["external_id", "api_key", "created_at", "updated_at"]
    search_fields = ["external_id"]
    readonly_fields = ["external_id", "api_key", "created_at", "updated_at", "run_links"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="runs")
    def run_links(self, obj):
        runs = obj.runs.order_by("created_at")
        return format_html_join(
            "",
            '<div><a href="{}">run #{}</a> {}</div>',
            (
                (reverse("admin:pipelines_pipelinerun_change", args=[r.pk]), r.pk, r.message[:80])
                for r in runs
            ),
        )
