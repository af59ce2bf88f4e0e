"""API keys: shown once, stored as a sha256 hash, revocable, with per-key rate limits."""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

KEY_PREFIX = "tf_"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> "ApiKeyQuerySet":
        return self.filter(revoked_at__isnull=True)


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: the global default (TOKENFLOW_RATE_LIMIT_RPM)."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: the global default (TOKENFLOW_RATE_LIMIT_TPM)."
    )
    batch_max_active_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Unfinished batch jobs at once. Empty: the global default "
        "(TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY); 0 = unlimited.",
    )
    batch_max_concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Batch items in flight at once across all of this key's jobs. Empty: the "
        "global default (TOKENFLOW_BATCH_MAX_CONCURRENCY_PER_KEY); 0 = unlimited.",
    )
    max_budget_usd = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Spend limit in USD per budget period; requests past it get 429 "
        "budget_exceeded. Empty: no limit.",
    )
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    soft_budget_usd = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Spend at which a warning is logged and shown here (requests still pass).",
    )
    soft_budget_crossed_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the soft limit was last crossed."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=(Q(max_budget_usd__isnull=True) | Q(max_budget_usd__gte=0))
                & (Q(soft_budget_usd__isnull=True) | Q(soft_budget_usd__gte=0)),
                name="apikey_budgets_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, *, name: str, user=None, **limits) -> tuple["ApiKey", str]:
        """Create a key; the raw value is returned once and never stored."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(
            name=name, prefix=raw[:10], key_hash=hash_key(raw), user=user, **limits
        )
        return key, raw

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
