"""Admin: jobs with progress bars and pause / resume / cancel; items with their attempts."""

from django.contrib import admin, messages
from django.db.models import Count, Q, Sum
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from batches import services
from batches.models import BatchAttempt, BatchItem, BatchJob
from batches.selectors import batch_statistics
from tokenflow_site.errors import ApiError
from web.admin_display import admin_link, ms, usd

INLINE_ITEMS = 50
DONE = [BatchItem.Status.COMPLETED, BatchItem.Status.FAILED, BatchItem.Status.CANCELLED]


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class LimitedFormSet(BaseInlineFormSet):
    """Only the first INLINE_ITEMS rows: a 100,000-item job page stays fast."""

    def get_queryset(self):
        return super().get_queryset()[:INLINE_ITEMS]


class BatchItemInline(ReadOnlyInline):
    model = BatchItem
    formset = LimitedFormSet
    fields = ["custom_id", "status", "attempts", "trajectory", "latency_ms", "error_code"]
    readonly_fields = fields
    verbose_name_plural = f"items (first {INLINE_ITEMS}; see the item list for all)"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("attempt_set")

    @admin.display(description="attempts (trajectory)")
    def trajectory(self, obj):
        return format_html_join(
            " → ",
            "{}: {}",
            (
                (a.number, a.error_code or f"ok {a.latency_ms:.0f} ms")
                for a in obj.attempt_set.all()
            ),
        )


def _progress_bar(done: int, total: int, failed: int = 0, job: BatchJob | None = None):
    """Green done, red failed; with a job, the bar follows ws/batches/<id>/ while it runs
    (web/static/web/admin_batches.js)."""
    percent = 100 * done / total if total else 100
    bad = 100 * failed / total if total else 0
    return format_html(
        '<div data-batch-job="{}" data-status="{}"><div style="width:160px;background:#eee;'
        'border-radius:3px;display:flex;height:12px" title="{}/{}"><div class="tf-done" '
        'style="width:{}%;background:#4caf50"></div><div class="tf-failed" style="width:{}%;'
        'background:#e53935"></div></div><span class="tf-label">{} / {} ({}%)</span></div>',
        job.pk if job else "",
        job.status if job else "",
        done,
        total,
        f"{percent - bad:.1f}",
        f"{bad:.1f}",
        done,
        total,
        f"{percent:.0f}",
    )


def _transition(modeladmin, request, queryset, action, label, **kwargs):
    done = 0
    for job in queryset:
        try:
            action(job=job, **kwargs)
            done += 1
        except ApiError as exc:
            modeladmin.message_user(request, exc.message, messages.WARNING)
    if done:
        modeladmin.message_user(request, f"{label} {done} job(s).", messages.SUCCESS)


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "model", "status", "progress", "concurrency", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["name", "model"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "total_items",
        "pause_reason",
        "cost",
        "started_at",
        "finished_at",
        "live_statistics",
        "items_link",
    ]
    fields = [
        "name",
        "model",
        "status",
        "pause_reason",
        "cost",
        "concurrency",
        "max_attempts",
        "retry_policy",
        "handler",
        "executor",
        "parameters",
        "prompt_template",
        "total_items",
        "started_at",
        "finished_at",
        "items_link",
        "live_statistics",
    ]
    inlines = [BatchItemInline]
    actions = ["pause_soft", "pause_hard", "resume", "cancel"]

    class Media:
        js = ["web/admin_batches.js"]

    def has_add_permission(self, request):
        return False  # jobs are created through the API or the Python client

    @admin.display(description="cost (USD)")
    def cost(self, obj):
        total = obj.items.aggregate(total=Sum("cost_usd"))["total"]
        return usd(total or 0)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                done_count=Count("items", filter=Q(items__status__in=DONE)),
                failed_count=Count("items", filter=Q(items__status=BatchItem.Status.FAILED)),
            )
        )

    @admin.display(description="progress")
    def progress(self, obj):
        return _progress_bar(obj.done_count, obj.total_items, obj.failed_count, job=obj)

    @admin.display(description="items")
    def items_link(self, obj):
        url = reverse("admin:batches_batchitem_changelist") + f"?job__id__exact={obj.pk}"
        return format_html('<a href="{}">all {} items</a>', url, obj.total_items)

    @admin.display(description="statistics")
    def live_statistics(self, obj):
        stats = batch_statistics(job=obj)
        rows = [
            (
                "progress",
                _progress_bar(stats["done"], stats["total"], stats["counts"]["failed"], job=obj),
            ),
            ("counts", stats["counts"]),
            ("throughput", f"{stats['throughput_per_second']} items/s"),
            ("ETA", f"{stats['eta_seconds']} s" if stats["eta_seconds"] else "-"),
            ("tokens", stats["tokens"]),
            ("latency ms", stats["latency_ms"]),
            ("attempts", stats["attempts"]),
            ("errors", stats["errors"]),
        ]
        return format_html(
            "<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows)
        )

    @admin.action(description="Pause (soft: finish in-flight items)")
    def pause_soft(self, request, queryset):
        _transition(self, request, queryset, services.batch_pause, "Paused", mode="soft")

    @admin.action(description="Pause (hard: return in-flight items to pending)")
    def pause_hard(self, request, queryset):
        _transition(self, request, queryset, services.batch_pause, "Paused", mode="hard")

    @admin.action(description="Resume")
    def resume(self, request, queryset):
        _transition(self, request, queryset, services.batch_resume, "Resumed")

    @admin.action(description="Cancel")
    def cancel(self, request, queryset):
        _transition(self, request, queryset, services.batch_cancel, "Cancelled")


class BatchAttemptInline(ReadOnlyInline):
    model = BatchAttempt
    show_change_link = False
    fields = [
        "number",
        "status",
        "model_name",
        "status_code",
        "error_code",
        "error_message",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "request",
        "result",
        "created_at",
    ]
    readonly_fields = fields


@admin.register(BatchItem)
class BatchItemAdmin(admin.ModelAdmin):
    list_display = ["id", "job_link", "custom_id", "status", "attempts", "latency", "error_code"]
    list_filter = ["status", "error_code"]
    search_fields = ["custom_id"]
    list_select_related = ["job"]
    raw_id_fields = ["job"]
    inlines = [BatchAttemptInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="job", ordering="job")
    def job_link(self, obj):
        return admin_link("batches.batchjob", obj.job_id, str(obj.job))

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj):
        return ms(obj.latency_ms)
