"""Stored answers of the response cache (exact and semantic)."""

from django.db import models
from django.utils import timezone


class CacheEntryQuerySet(models.QuerySet):
    def live(self) -> "CacheEntryQuerySet":
        return self.filter(expires_at__gt=timezone.now())

    def expired(self) -> "CacheEntryQuerySet":
        return self.filter(expires_at__lte=timezone.now())


class CacheEntry(models.Model):
    """One completed answer, found again by its exact request hash (`exact_key`) or, within
    its `scope_key` (model, parameters, options, earlier messages), by the similarity of its
    last user message's `embedding` (by `embedder`). Entries belong to the API key that
    made them."""

    exact_key = models.CharField(max_length=64)
    scope_key = models.CharField(max_length=64)
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        null=True,
        blank=True,
        on_delete=models.CASCADE,  # cached answers can hold private data: they go with the key
        related_name="cache_entries",
    )
    model = models.ForeignKey(
        "routing.ModelRanking", on_delete=models.CASCADE, related_name="cache_entries"
    )
    model_name = models.CharField(max_length=200)
    query_text = models.TextField(blank=True, help_text="The last user message (semantic).")
    embedding = models.BinaryField(
        null=True, blank=True, help_text="float32 vector of query_text, by `embedder`."
    )
    embedder = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="The embedder of `embedding` (name/model/dimensions): only vectors of the "
        "configured embedder are compared.",
    )
    response_text = models.TextField()
    finish_reason = models.CharField(max_length=32, default="stop")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    generation = models.ForeignKey(
        "routing.Generation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The generation whose answer this is.",
    )
    hits = models.PositiveIntegerField(default=0)
    last_hit_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    objects = CacheEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "cache entries"
        indexes = [
            models.Index(fields=["scope_key", "id"], name="cache_scope_id"),
            models.Index(fields=["exact_key", "api_key"], name="cache_exact_key"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name}: {self.query_text[:60] or self.exact_key[:12]}"

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()
