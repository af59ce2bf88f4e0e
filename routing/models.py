"""Prompts, the two routing tables, classifications and generations."""

import hashlib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Prompt(models.Model):
    """The text a client sent, as received (before any compression)."""

    class Source(models.TextChoices):
        API = "api", "REST API"
        WEBSOCKET = "ws", "WebSocket"
        OPENAI = "openai", "OpenAI-compatible"
        PROCESS = "process", "Fan-out"
        BATCH = "batch", "Batch"

    text = models.TextField()
    messages = models.JSONField(default=list, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True, editable=False)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="prompts"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.text[:80]

    def save(self, *args, **kwargs):
        self.sha256 = hashlib.sha256(self.text.encode()).hexdigest()
        super().save(*args, **kwargs)


class ModelRankingQuerySet(models.QuerySet):
    def enabled(self) -> "ModelRankingQuerySet":
        return self.filter(enabled=True)

    def update(self, **kwargs) -> int:
        """A bulk update (admin actions, scripts) sends no save signal: drop this process's
        cached models here too (routing.services.models.models_cache)."""
        from routing.services.models import models_cache

        updated = super().update(**kwargs)
        models_cache.forget()
        return updated

    update.alters_data = True


class ModelRanking(models.Model):
    """The model registry: what a model name means and how good it is (lower rank = better)."""

    class Provider(models.TextChoices):
        LOCAL = "local", "Local Hugging Face model"
        MOCK = "mock", "Mock (deterministic)"
        OPENAI = "openai", "OpenAI"
        GROQ = "groq", "Groq"
        OPENROUTER = "openrouter", "OpenRouter"
        CUSTOM = "custom", "OpenAI-compatible (custom base URL)"
        LOCAL_EMBEDDING = "local-embedding", "Local embedding model (MiniLM)"

    name = models.CharField(max_length=200, unique=True, help_text="Public name, e.g. groq/llama")
    provider = models.CharField(max_length=20, choices=Provider.choices)
    upstream_model = models.CharField(max_length=200, help_text="Model id sent to the provider.")
    base_url = models.URLField(blank=True, help_text="Overrides the provider's base URL.")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="Env var holding the key (default: provider's)."
    )
    rank = models.PositiveIntegerField(default=100, db_index=True)
    enabled = models.BooleanField(default=True)
    input_price_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    output_price_per_mtok = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    cached_input_price_per_mtok = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        default=0,
        help_text="USD per million prompt tokens the provider served from its prompt cache.",
    )
    cache_similarity_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="Semantic response cache: cosine similarity for a hit. Empty: the global "
        "default (TOKENFLOW_CACHE_SIMILARITY).",
    )
    cache_shared_across_keys = models.BooleanField(
        default=False,
        help_text="Let one API key's cached answers serve another key's requests. Off by "
        "default: cached answers can hold private data.",
    )
    context_window = models.PositiveIntegerField(default=8192)
    options = models.JSONField(
        default=dict, blank=True, help_text="Provider options (mock: response, token_delay, ...)."
    )
    description = models.CharField(max_length=300, blank=True)
    # Capabilities: a request that needs one the model lacks is a 400 naming it; model
    # "auto" skips such models (routing.services.selection).
    supports_chat = models.BooleanField(default=True, help_text="Chat completions.")
    supports_tools = models.BooleanField(
        default=False, help_text="Function calling (tools, tool_choice, tool messages)."
    )
    supports_json_object = models.BooleanField(
        default=False, help_text='response_format {"type": "json_object"}.'
    )
    supports_json_schema = models.BooleanField(
        default=False, help_text='response_format {"type": "json_schema"} (structured output).'
    )
    supports_vision = models.BooleanField(default=False, help_text="image_url content parts.")
    supports_embeddings = models.BooleanField(default=False, help_text="/v1/embeddings.")
    passthrough_fields = models.JSONField(
        default=list,
        blank=True,
        help_text="Request fields TokenFlow does not know that may be forwarded to this "
        'model\'s upstream as they are (e.g. ["top_k", "provider"]); others are dropped.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelRankingQuerySet.as_manager()

    class Meta:
        ordering = ["rank", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(context_window__gt=0), name="model_context_positive"
            ),
            models.CheckConstraint(
                condition=Q(input_price_per_mtok__gte=0)
                & Q(output_price_per_mtok__gte=0)
                & Q(cached_input_price_per_mtok__gte=0),
                name="model_prices_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Staff input that would leak a server secret or reach internal hosts is refused."""
        from routing.providers.safety import api_key_env_problem, base_url_problem

        errors = {}
        if problem := api_key_env_problem(self.api_key_env):
            errors["api_key_env"] = problem
        if problem := base_url_problem(self.base_url):
            errors["base_url"] = problem
        if errors:
            raise ValidationError(errors)

    def supports(self, capability: str) -> bool:
        """`capability` is one of routing.messages.CAPABILITIES."""
        return bool(getattr(self, f"supports_{capability}"))

    def capabilities(self) -> list[str]:
        from routing.messages import CAPABILITIES

        return [name for name in CAPABILITIES if self.supports(name)]


class CategoryRoute(models.Model):
    """category -> model; the highest priority enabled route wins, lower ones are fallbacks."""

    category = models.SlugField(max_length=100, db_index=True)
    description = models.CharField(
        max_length=500,
        blank=True,
        help_text="What prompts of this category look like (classifier).",
    )
    model = models.ForeignKey(ModelRanking, on_delete=models.CASCADE, related_name="routes")
    priority = models.IntegerField(default=100, help_text="Higher wins; lower ones are fallbacks.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["category", "-priority"]
        constraints = [
            models.UniqueConstraint(
                fields=["category", "model"], name="route_category_model_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.category} -> {self.model} ({self.priority})"


class Classification(models.Model):
    prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.CASCADE, related_name="classifications"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    engine = models.CharField(max_length=100)
    categories = models.JSONField(default=list)
    multi_label = models.BooleanField(default=False)
    top_category = models.CharField(max_length=100, db_index=True)
    confidence = models.FloatField()
    scores = models.JSONField(default=list)
    duration_ms = models.FloatField(default=0)
    feedback_category = models.CharField(
        max_length=100, blank=True, db_index=True, help_text="The right label, as corrected."
    )
    feedback_source = models.CharField(max_length=10, blank=True, help_text="key or staff")
    feedback_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(confidence__gte=0) & Q(confidence__lte=1), name="confidence_in_unit"
            ),
        ]
        # The dashboard's routing mix counts a time range by category (index-only).
        indexes = [
            models.Index(fields=["created_at", "top_category"], name="classification_dashboard")
        ]

    def __str__(self) -> str:
        return f"{self.top_category} ({self.confidence:.2f})"

    def labels(self) -> list[str]:
        return [c["category"] for c in self.categories]


class CacheResult(models.TextChoices):
    EXACT = "exact"
    SEMANTIC = "semantic"
    MISS = "miss"


class Generation(models.Model):
    """One model call, from queued to a terminal status, with whatever it produced."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.SET_NULL, related_name="generations"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    classification = models.ForeignKey(
        Classification, null=True, blank=True, on_delete=models.SET_NULL, related_name="generations"
    )
    compression = models.ForeignKey(
        "compression.Compression",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generations",
    )
    model = models.ForeignKey(
        ModelRanking, null=True, blank=True, on_delete=models.SET_NULL, related_name="generations"
    )
    model_name = models.CharField(max_length=200, db_index=True)
    provider = models.CharField(max_length=20, db_index=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    transport = models.CharField(max_length=20, blank=True, db_index=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    parameters = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text="OpenAI fields forwarded upstream: tools, tool_choice, response_format, ...",
    )
    input_messages = models.JSONField(default=list)
    output_text = models.TextField(blank=True)
    tool_calls = models.JSONField(
        null=True, blank=True, help_text="The tool calls the model made, assembled."
    )
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_prompt_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt tokens the provider served from its own cache."
    )
    cost_usd = models.DecimalField(
        max_digits=16, decimal_places=10, null=True, blank=True, help_text="What this call cost."
    )
    cache = models.CharField(
        max_length=10,
        choices=CacheResult.choices,
        blank=True,
        db_index=True,
        help_text="Response cache: exact or semantic hit, miss, or empty when not consulted.",
    )
    cost_saved_usd = models.DecimalField(
        max_digits=16,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="What a cache hit saved: the cost of the generation it replayed.",
    )
    ttft_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    attempts = models.JSONField(default=list, blank=True, help_text="Retries and fallbacks.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True, help_text="What the API client was told.")
    error_detail = models.TextField(
        blank=True,
        help_text="Staff only: the provider's own error text, secrets redacted.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Last checkpoint of a streaming row (partial text written); the sweeper fails a
    # streaming row whose heartbeat stopped (its process died).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="generation_status_created"),
            # The dashboard's GROUP BYs over a time range read only these columns: the scan
            # is index-only (web.selectors, bench/dashboard.py).
            models.Index(
                fields=[
                    "created_at",
                    "model_name",
                    "status",
                    "prompt_tokens",
                    "completion_tokens",
                    "ttft_ms",
                    "duration_ms",
                    "classification",
                ],
                name="generation_dashboard",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.model_name} {self.status}"


class Embedding(models.Model):
    """One /v1/embeddings call: what was embedded (hashed), by which model, at what cost.
    The vectors themselves are kept only with TOKENFLOW_EMBEDDINGS_STORE_VECTORS."""

    class Status(models.TextChoices):
        COMPLETED = "completed"
        FAILED = "failed"

    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model = models.ForeignKey(
        ModelRanking, null=True, blank=True, on_delete=models.SET_NULL, related_name="embeddings"
    )
    model_name = models.CharField(max_length=200, db_index=True)
    provider = models.CharField(max_length=20, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    input_count = models.PositiveIntegerField(default=0)
    input_sha256 = models.JSONField(default=list, help_text="SHA-256 of each input, in order.")
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    encoding_format = models.CharField(max_length=10, default="float")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    vectors = models.JSONField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.model_name} x{self.input_count}"


MAX_EXAMPLE_CHARS = 1000


def example_key(text: str) -> str:
    """The de-duplication key of an example: case- and whitespace-insensitive."""
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()


class CategoryExample(models.Model):
    """An example utterance of a routing-table category (shared by the category's routes)."""

    class Source(models.TextChoices):
        STAFF = "staff", "Staff"
        CORRECTION = "correction", "Correction"
        IMPORT = "import", "Import"

    category = models.SlugField(max_length=100, db_index=True)
    text = models.CharField(max_length=MAX_EXAMPLE_CHARS)
    key = models.CharField(max_length=64, editable=False)
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.STAFF)
    route = models.ForeignKey(
        CategoryRoute,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="examples",
        help_text="The route it was added on in the admin (examples belong to the category).",
    )
    classification = models.ForeignKey(
        Classification,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="examples",
        help_text="The corrected classification (source: correction).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["category", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["category", "key"], name="example_category_text_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.category}: {self.text[:60]}"

    def save(self, *args, **kwargs):
        self.text = self.text.strip()
        self.key = example_key(self.text)
        super().save(*args, **kwargs)


class RouterVersion(models.Model):
    """What a stored router version keeps besides its weights: a report, who made it and
    when (the pk is the version; newest first)."""

    report = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-pk"]


class RouterHead(RouterVersion):
    """A trained router, one row per training run (the pk is the version): a linear head
    over the classifier's prompt embeddings, or fine-tuned top encoder layers with the
    categories' prototypes (routing.classifiers.finetune). The newest active head is used
    by every process."""

    class Kind(models.TextChoices):
        LINEAR = "linear", "linear head on frozen embeddings"
        FINETUNED = "finetuned", "fine-tuned top layers + prototypes"

    engine = models.CharField(max_length=100, help_text="The embedding model it was trained on.")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.LINEAR)
    labels = models.JSONField(default=list)
    weights = models.BinaryField(
        help_text="float32 labels x dim, row-major: the linear head's weights, or the "
        "fine-tuned router's category prototypes."
    )
    bias = models.JSONField(default=list)
    dim = models.PositiveIntegerField()
    top_layers = models.PositiveSmallIntegerField(
        default=0, help_text="Fine-tuned: how many top transformer layers are stored."
    )
    layers = models.BinaryField(
        default=b"",
        blank=True,
        help_text="Fine-tuned: safetensors of the top layers (fp16) and the training texts' "
        "embeddings.",
    )
    temperature = models.FloatField(
        default=1.0, help_text="Fine-tuned: softmax temperature fitted on the CV folds."
    )
    examples = models.PositiveIntegerField(default=0)
    folds = models.PositiveIntegerField(default=0)
    cv_accuracy = models.FloatField(help_text="k-fold cross-validated accuracy of the head.")
    zero_shot_accuracy = models.FloatField(help_text="Zero-shot accuracy on the same folds.")
    active = models.BooleanField(default=False, db_index=True)

    def __str__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"router v{self.pk} ({state}, cv {self.cv_accuracy:.1%})"


class RouterAdaptation(RouterVersion):
    """Category prototypes learnt from recent traffic WITHOUT labels (one row per
    adaptation run; the pk is the version): zero-shot pseudo-labels of the recent prompts,
    refined a few rounds (routing.services.adaptation). Single-label classification adds
    each category's cosine with its prototype (prompt and prototypes centred on the
    traffic's mean) to the zero-shot score when every requested label was adapted. The
    newest active row per label set is used by every process."""

    engine = models.CharField(max_length=100, help_text="The embedding model it was fitted on.")
    labels = models.JSONField(default=list, help_text="The label set it was fitted for.")
    categories = models.JSONField(
        default=list, help_text="[{category, description, examples}] as scored when fitted."
    )
    prototypes = models.BinaryField(help_text="float32 labels x dim, row-major.")
    center = models.BinaryField(help_text="float32 dim: the mean embedding of the prompts.")
    dim = models.PositiveIntegerField()
    weight = models.FloatField(help_text="The prototype cosine's weight next to zero-shot.")
    rounds = models.PositiveSmallIntegerField()
    prompts = models.PositiveIntegerField(help_text="Unlabelled prompts it was fitted on.")
    active = models.BooleanField(default=True, db_index=True)

    def __str__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"adaptation v{self.pk} ({state}, {', '.join(self.labels)}; {self.prompts} prompts)"
