import csv
import io
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html_join

from routing.classifiers.cache import routes_changed
from routing.models import (
    MAX_EXAMPLE_CHARS,
    CategoryExample,
    CategoryRoute,
    Classification,
    Embedding,
    Generation,
    ModelRanking,
    Prompt,
    RouterAdaptation,
    RouterHead,
    example_key,
)
from routing.services.feedback import feedback_apply, feedback_report
from tokenflow_site.errors import ApiError
from web.admin_display import (
    TimingColumns,
    admin_link,
    changelist_link,
    percent,
    tokens,
    truncated,
    usd,
)

PRICE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok", "cached_input_price_per_mtok")
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_IMPORT_ROWS = 20_000


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
        "cached_input_price",
        "output_price",
        "context",
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
            {
                "description": "USD per million tokens (local and mock models cost 0 unless "
                "set here). Cached input: prompt tokens the provider served from its cache.",
                "fields": [
                    "input_price_per_mtok",
                    "cached_input_price_per_mtok",
                    "output_price_per_mtok",
                    "context_window",
                ],
            },
        ),
        ("Provider options", {"fields": ["options"]}),
        (
            "Response cache",
            {
                "description": "Semantic hits need this cosine similarity (empty: "
                "TOKENFLOW_CACHE_SIMILARITY). Sharing lets one API key's cached answers serve "
                "other keys: off by default, since answers can hold private data. Entries "
                "are listed and purged under Response cache.",
                "fields": ["cache_similarity_threshold", "cache_shared_across_keys"],
            },
        ),
    ]

    @admin.display(description="input", ordering="input_price_per_mtok")
    def input_price(self, obj):
        return f"${obj.input_price_per_mtok:.2f} / Mtok"

    @admin.display(description="output", ordering="output_price_per_mtok")
    def output_price(self, obj):
        return f"${obj.output_price_per_mtok:.2f} / Mtok"

    @admin.display(description="cached input", ordering="cached_input_price_per_mtok")
    def cached_input_price(self, obj):
        return f"${obj.cached_input_price_per_mtok:.2f} / Mtok"

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        """Prices are USD per million tokens: never negative (a form error on the field,
        not the database constraint's)."""
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name in PRICE_FIELDS and field is not None:
            field.min_value = 0
            field.validators.append(MinValueValidator(0))
            field.widget.attrs["min"] = 0
            field.help_text = field.help_text or "USD per million tokens."
        return field

    @admin.display(description="context", ordering="context_window")
    def context(self, obj):
        return tokens(obj.context_window)


class CategoryExampleFormSet(BaseInlineFormSet):
    """Examples belong to the category (shared by all its routes), not to one route: the
    inline lists every example of the route's category and files new ones under it."""

    def get_queryset(self):
        if self.instance.pk is None:
            return CategoryExample.objects.none()
        return CategoryExample.objects.filter(category=self.instance.category).order_by(
            "-created_at", "-pk"
        )

    def clean(self):
        super().clean()
        seen = set()
        for form in self.forms:
            if not form.cleaned_data or form.cleaned_data.get("DELETE"):
                continue
            text = (form.cleaned_data.get("text") or "").strip()
            if not text:
                form.add_error("text", "An example must not be empty.")
                continue
            key = example_key(text)
            duplicate = key in seen or (
                CategoryExample.objects.filter(category=self.instance.category, key=key)
                .exclude(pk=form.instance.pk)
                .exists()
            )
            if duplicate:
                form.add_error("text", "This category already has this example.")
            seen.add(key)

    def save_new(self, form, commit=True):
        form.instance.category = self.instance.category
        form.instance.created_by = getattr(self, "user", None)
        return super().save_new(form, commit=commit)

    def save_existing(self, form, obj, commit=True):
        obj.category = self.instance.category
        return super().save_existing(form, obj, commit=commit)


class CategoryExampleInline(admin.TabularInline):
    model = CategoryExample
    formset = CategoryExampleFormSet
    fk_name = "route"
    extra = 1
    fields = ["text", "source", "created_at"]
    readonly_fields = ["created_at"]
    verbose_name = "example utterance (shared by every route of this category)"

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.user = request.user
        return formset


@admin.register(CategoryRoute)
class CategoryRouteAdmin(admin.ModelAdmin):
    list_display = ["category", "model", "priority", "enabled", "short_description", "updated_at"]
    list_editable = ["priority", "enabled"]
    list_filter = ["category", "enabled", "model__provider"]
    search_fields = ["category", "description", "model__name"]
    list_select_related = ["model"]

    @admin.display(description="description")
    def short_description(self, obj):
        return truncated(obj.description, 70)

    date_hierarchy = "created_at"
    inlines = [CategoryExampleInline]


class ExampleImportForm(forms.Form):
    file = forms.FileField(
        help_text='JSONL lines {"category", "text"} (or "label"/"prompt"), or CSV with a '
        "header row category,text. Up to 5 MB."
    )


def parse_examples(name: str, data: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    """(rows, errors) of an uploaded JSONL or CSV file; errors name the line."""
    rows, errors = [], []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], ["the file is not UTF-8 text."]
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        records = [(index + 2, record) for index, record in enumerate(reader)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append(f"line {number}: not JSON ({exc.msg}).")
    if len(records) > MAX_IMPORT_ROWS:
        return [], [f"{len(records)} rows; the limit is {MAX_IMPORT_ROWS}."]
    for number, record in records:
        if not isinstance(record, dict):
            errors.append(f"line {number}: not an object.")
            continue
        category = record.get("category", record.get("label"))
        example = record.get("text", record.get("prompt"))
        if not isinstance(category, str) or not category.strip():
            errors.append(f"line {number}: 'category' is missing or empty.")
        elif not _is_slug(category):
            errors.append(f"line {number}: category {category!r} is not a slug.")
        elif not isinstance(example, str) or not example.strip():
            errors.append(f"line {number}: 'text' is missing or empty.")
        elif len(example.strip()) > MAX_EXAMPLE_CHARS or "\x00" in example:
            errors.append(f"line {number}: 'text' is over {MAX_EXAMPLE_CHARS} characters.")
        else:
            rows.append((category.strip(), example.strip()))
    return rows, errors


def _is_slug(value: str) -> bool:
    try:
        forms.SlugField().clean(value.strip())
    except ValidationError:
        return False
    return len(value.strip()) <= 100


def examples_import(rows: list[tuple[str, str]], *, user=None) -> tuple[int, int]:
    """(created, skipped duplicates), in one transaction."""
    created = skipped = 0
    with transaction.atomic():
        for category, text in rows:
            key = example_key(text)
            if CategoryExample.objects.filter(category=category, key=key).exists():
                skipped += 1
                continue
            CategoryExample.objects.create(
                category=category, text=text, source=CategoryExample.Source.IMPORT, created_by=user
            )
            created += 1
    routes_changed()
    return created, skipped


def train_router_action(modeladmin, request, queryset):
    """Train a new router head on every example (the selection does not matter)."""
    from routing.services.training import router_train

    try:
        head, result = router_train(user=request.user)
    except ApiError as exc:
        modeladmin.message_user(request, exc.message, messages.ERROR)
        return
    verdict = "active" if head.active else "kept inactive (zero-shot is as good)"
    modeladmin.message_user(
        request,
        f"Router v{head.pk} ({head.get_kind_display()}): {result.folds}-fold CV accuracy "
        f"{result.cv_accuracy:.1%} vs zero-shot {result.zero_shot_accuracy:.1%} on "
        f"{result.examples} examples ({result.cv_seconds + result.fit_seconds:.0f} s); "
        f"{verdict}.",
        messages.SUCCESS if head.active else messages.WARNING,
    )


train_router_action.short_description = "Train the router on all examples"


@admin.register(CategoryExample)
class CategoryExampleAdmin(admin.ModelAdmin):
    list_display = ["category", "short_text", "source", "classification", "created_at"]
    list_filter = ["category", "source", "created_at"]
    search_fields = ["text", "category"]
    fields = ["category", "text", "source", "route", "classification", "created_by"]
    readonly_fields = ["classification", "created_by"]
    raw_id_fields = ["route"]
    actions = [train_router_action]
    change_list_template = "admin/routing/categoryexample/change_list.html"

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text[:100]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_urls(self):
        return [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="routing_categoryexample_import",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request):
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        form = ExampleImportForm(request.POST or None, request.FILES or None)
        errors: list[str] = []
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > MAX_IMPORT_BYTES:
                errors = [f"The file is {upload.size} bytes; the limit is {MAX_IMPORT_BYTES}."]
            else:
                rows, errors = parse_examples(upload.name, upload.read())
                if not rows and not errors:
                    errors = ["The file has no examples."]
            if not errors:  # all or nothing
                created, skipped = examples_import(rows, user=request.user)
                self.message_user(
                    request,
                    f"Imported {created} examples; skipped {skipped} duplicates.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:routing_categoryexample_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Import example utterances",
            "form": form,
            "errors": errors[:50],
            "error_count": len(errors),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/routing/categoryexample/import.html", context)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "feedback_report": str(feedback_report())}
        return super().changelist_view(request, extra_context)


@admin.register(RouterHead)
class RouterHeadAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "active",
        "kind",
        "top_layers",
        "cv_accuracy",
        "zero_shot_accuracy",
        "examples",
        "folds",
        "engine",
        "created_by",
        "created_at",
    ]
    list_filter = ["active", "engine"]
    readonly_fields = [
        "engine",
        "kind",
        "top_layers",
        "temperature",
        "labels",
        "dim",
        "examples",
        "folds",
        "cv_accuracy",
        "zero_shot_accuracy",
        "report",
        "created_by",
        "created_at",
    ]
    exclude = ["weights", "bias", "layers"]
    actions = [train_router_action, "activate", "deactivate"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Use this head (deactivates the others)")
    def activate(self, request, queryset):
        head = queryset.order_by("-pk").first()
        if head is None:
            return
        with transaction.atomic():
            RouterHead.objects.exclude(pk=head.pk).update(active=False)
            RouterHead.objects.filter(pk=head.pk).update(active=True)
        routes_changed()
        self.message_user(request, f"Router v{head.pk} is active.")

    @admin.action(description="Stop using these heads (zero-shot)")
    def deactivate(self, request, queryset):
        queryset.update(active=False)
        routes_changed()


def adapt_router_action(modeladmin, request, queryset):
    """Adapt the router to recent traffic (the selection does not matter)."""
    from routing.services.adaptation import router_adapt

    try:
        rows = router_adapt(user=request.user)
    except ApiError as exc:
        modeladmin.message_user(request, exc.message, messages.ERROR)
        return
    modeladmin.message_user(
        request,
        "; ".join(
            f"Adaptation v{row.pk} ({', '.join(row.labels)}): {row.prompts} unlabelled prompts, "
            f"{row.report['changed']} change category; active"
            for row in rows
        ),
        messages.SUCCESS,
    )


adapt_router_action.short_description = "Adapt the router to recent traffic (no labels)"


@admin.register(RouterAdaptation)
class RouterAdaptationAdmin(admin.ModelAdmin):
    list_display = ["id", "active", "labels", "prompts", "rounds", "weight", "engine", "created_at"]
    list_filter = ["active", "engine"]
    readonly_fields = [
        "engine",
        "labels",
        "categories",
        "dim",
        "weight",
        "rounds",
        "prompts",
        "report",
        "created_by",
        "created_at",
    ]
    exclude = ["prototypes", "center"]
    actions = [adapt_router_action, "deactivate"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Stop using these adaptations (zero-shot)")
    def deactivate(self, request, queryset):
        queryset.update(active=False)
        routes_changed()


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    list_display = ["id", "short_text", "source", "api_key", "created_at"]
    readonly_fields = ["related"]
    list_filter = ["source", "created_at"]
    search_fields = ["text", "sha256"]
    date_hierarchy = "created_at"

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


class CorrectionForm(forms.Form):
    category = forms.CharField(max_length=100)


class ClassificationChangeForm(forms.ModelForm):
    """Only the correction is editable: one of the classification's own categories."""

    feedback_category = forms.ChoiceField(required=False, label="Correct category")

    class Meta:
        model = Classification
        fields = ["feedback_category"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        labels = self.instance.labels() if self.instance.pk else []
        self.fields["feedback_category"].choices = [("", "---------")] + [
            (label, label) for label in labels
        ]


@admin.register(Classification)
class ClassificationAdmin(TimingColumns, admin.ModelAdmin):
    list_display = [
        "id",
        "top_category",
        "feedback_category",
        "confidence_pct",
        "short_prompt",
        "engine",
        "multi_label",
        "duration",
        "created_at",
    ]
    list_select_related = ["prompt"]
    list_filter = ["top_category", "feedback_category", "engine", "multi_label", "created_at"]
    search_fields = ["prompt__text", "top_category"]
    date_hierarchy = "created_at"
    form = ClassificationChangeForm
    readonly_fields = [
        "prompt",
        "api_key",
        "engine",
        "categories",
        "multi_label",
        "top_category",
        "confidence",
        "scores",
        "duration_ms",
        "feedback_source",
        "feedback_at",
        "created_at",
        "prompt_link",
        "generations_link",
    ]
    actions = ["correct", adapt_router_action]

    @admin.display(description="confidence", ordering="confidence")
    def confidence_pct(self, obj):
        return percent(obj.confidence)

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

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        category = form.cleaned_data.get("feedback_category")
        if category and form.has_changed():
            feedback_apply(obj, category, source="staff", user=request.user)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "feedback_report": str(feedback_report())}
        return super().changelist_view(request, extra_context)

    @admin.action(description="Correct the category of the selected classifications")
    def correct(self, request, queryset):
        queryset = queryset.select_related("prompt")
        labels = sorted({label for row in queryset for label in row.labels()})
        if "apply" in request.POST:
            form = CorrectionForm(request.POST)
            if form.is_valid():
                category, done, refused = form.cleaned_data["category"], 0, []
                for row in queryset:
                    try:
                        feedback_apply(row, category, source="staff", user=request.user)
                        done += 1
                    except ApiError:
                        refused.append(str(row.pk))
                self.message_user(request, f"Corrected {done} classifications to {category!r}.")
                if refused:
                    self.message_user(
                        request,
                        f"{category!r} is not a category of classifications "
                        f"{', '.join(refused)}: left unchanged.",
                        messages.WARNING,
                    )
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Correct classifications",
            "queryset": queryset,
            "labels": labels,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/routing/classification/correct.html", context)


@admin.register(Generation)
class GenerationAdmin(TimingColumns, ReadOnlyAdmin):
    list_display = [
        "id",
        "model_name",
        "transport",
        "status",
        "finish_reason",
        "short_prompt",
        "tool_call_count",
        "tokens_in",
        "tokens_out",
        "cost",
        "ttft",
        "duration",
        "links",
        "created_at",
    ]
    readonly_fields = ["ttft", "duration", "tokens_in", "tokens_out", "cost", "links"]
    list_filter = [
        "status",
        "provider",
        "model_name",
        "transport",
        "finish_reason",
        "cache",
        "created_at",
    ]
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
                    "error_detail",
                ]
            },
        ),
        (
            "Usage and timings",
            {
                "fields": [
                    "tokens_in",
                    "tokens_out",
                    "cached_prompt_tokens",
                    "cost",
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

    @admin.display(description="tool calls")
    def tool_call_count(self, obj):
        return len(obj.tool_calls or [])

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return truncated(obj.prompt.text if obj.prompt else "", 60)

    @admin.display(description="in", ordering="prompt_tokens")
    def tokens_in(self, obj):
        return tokens(obj.prompt_tokens)

    @admin.display(description="out", ordering="completion_tokens")
    def tokens_out(self, obj):
        return tokens(obj.completion_tokens)

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj):
        return usd(obj.cost_usd)

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
