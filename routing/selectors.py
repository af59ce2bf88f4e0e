"""Read-side queries of the routing app."""

import datetime
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.permissions import Principal, owned_by
from routing.models import CacheResult, Generation


def generation_list(
    *,
    principal: Principal,
    status: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    transport: str | None = None,
) -> QuerySet[Generation]:
    """Generations visible to the caller (its key's own; all for staff), newest first."""
    queryset = Generation.objects.select_related("prompt").order_by("-created_at", "-id")
    filters = {"status": status, "model_name": model, "provider": provider, "transport": transport}
    return owned_by(queryset, principal).filter(
        **{name: value for name, value in filters.items() if value}
    )


# --- usage ---------------------------------------------------------------------------------

USAGE_GROUPS = ("model", "day", "key")
_USAGE_NUMBERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cache_hits",
    "saved_usd",
    "errors",
)


def _usage_group(queryset: QuerySet, group_by: str, *, model: str, key: str) -> QuerySet:
    if group_by == "model":
        return queryset.annotate(g_model=F(model)).values("g_model")
    if group_by == "day":
        return queryset.annotate(g_day=TruncDate("created_at", tzinfo=datetime.UTC)).values("g_day")
    return queryset.annotate(g_key=F(f"{key}__prefix"), g_key_name=F(f"{key}__name")).values(
        "g_key", "g_key_name"
    )


def _usage_sums(failed: str) -> dict[str, Any]:
    """The aggregates generations and batch attempts share (`failed`: their failed status)."""
    return {
        "requests": Count("id"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cost_usd": Sum("cost_usd"),
        "errors": Count("id", filter=Q(status=failed)),
    }


def usage_summary(
    *,
    principal: Principal,
    group_by: str,
    start: datetime.datetime,
    end: datetime.datetime,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per group and in total: requests, tokens, cost, cache hits, savings and errors of
    the generations and batch attempts in [start, end) the principal may see."""
    from batches.models import BatchAttempt

    hits = Q(cache__in=[CacheResult.EXACT, CacheResult.SEMANTIC])
    generations = _usage_group(
        owned_by(Generation.objects.order_by(), principal).filter(
            created_at__gte=start, created_at__lt=end
        ),
        group_by,
        model="model_name",
        key="api_key",
    ).annotate(
        **_usage_sums(Generation.Status.FAILED),
        cache_hits=Count("id", filter=hits),
        saved_usd=Sum("cost_saved_usd"),
    )
    attempts = _usage_group(
        owned_by(BatchAttempt.objects.order_by(), principal, field="item__job__api_key").filter(
            created_at__gte=start, created_at__lt=end
        ),
        group_by,
        model="model_name",
        key="item__job__api_key",
    ).annotate(**_usage_sums(BatchAttempt.Status.FAILED))
    groups: dict[tuple, dict[str, Any]] = {}
    for row in [*generations, *attempts]:
        ident = tuple(v for k, v in sorted(row.items()) if k.startswith("g_"))
        group = groups.setdefault(ident, {**{k: v for k, v in row.items() if k.startswith("g_")}})
        for name in _USAGE_NUMBERS:
            group[name] = (group.get(name) or 0) + (row.get(name) or 0)
    rows = []
    for group in groups.values():
        out: dict[str, Any] = {}
        if group_by == "model":
            out["model"] = group["g_model"]
        elif group_by == "day":
            out["day"] = group["g_day"]
        else:
            out["api_key"], out["api_key_name"] = group["g_key"], group["g_key_name"]
        rows.append({**out, **_usage_numbers(group)})
    if group_by == "day":
        rows.sort(key=lambda r: r["day"])
    else:
        rows.sort(key=lambda r: (-r["cost_usd"], -r["requests"]))
    total = {
        name: sum(group.get(name) or 0 for group in groups.values()) for name in _USAGE_NUMBERS
    }
    return rows, _usage_numbers(total)


def _usage_numbers(group: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = (
        int(group.get("prompt_tokens") or 0),
        int(group.get("completion_tokens") or 0),
    )
    return {
        "requests": int(group.get("requests") or 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": float(group.get("cost_usd") or 0),
        "cache_hits": int(group.get("cache_hits") or 0),
        "saved_usd": float(group.get("saved_usd") or 0),
        "errors": int(group.get("errors") or 0),
    }
