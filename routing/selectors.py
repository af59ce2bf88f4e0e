"""Read-side queries of the routing app."""

from django.db.models import QuerySet

from accounts.permissions import Principal, owned_by
from routing.models import Generation


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
