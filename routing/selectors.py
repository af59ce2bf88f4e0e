"""Read-side queries of the routing app."""

from django.db.models import QuerySet

from accounts.models import ApiKey
from routing.models import Generation


def generation_list(
    *,
    api_key: ApiKey | None,
    user=None,
    status: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    transport: str | None = None,
) -> QuerySet[Generation]:
    """Generations visible to the caller: its own (API key), all of them (staff session)."""
    queryset = Generation.objects.select_related("prompt").order_by("-created_at", "-id")
    if api_key is not None:
        queryset = queryset.filter(api_key=api_key)
    elif not (user is not None and user.is_authenticated and user.is_staff):
        return queryset.none()
    filters = {"status": status, "model_name": model, "provider": provider, "transport": transport}
    return queryset.filter(**{name: value for name, value in filters.items() if value})
