"""Routing: which model serves a category, with its fallbacks, from the CategoryRoute table."""

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from routing.classifiers.base import Category
from routing.models import CategoryRoute, ModelRanking
from tokenflow_site.errors import ApiError


@dataclass
class RouteInfo:
    """Why the router chose what it chose (reported in metadata and x-tokenflow-route)."""

    category: str
    routed: bool  # False: the category has no usable route, the default model answers
    reason: str = ""
    candidates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "routed": self.routed,
            "default_used": not self.routed,
            "reason": self.reason,
            "candidates": self.candidates,
        }


def routing_categories() -> list[Category]:
    """The enabled categories of the routing table, each with its best description
    (the highest-priority enabled route that has one)."""
    descriptions: dict[str, str] = {}
    routes = CategoryRoute.objects.filter(enabled=True).order_by("category", "-priority", "pk")
    for category, description in routes.values_list("category", "description"):
        if not descriptions.get(category):
            descriptions[category] = description
    return [Category(label, text) for label, text in descriptions.items()]


def _default_model() -> ModelRanking | None:
    """TOKENFLOW_DEFAULT_MODEL if enabled, else the best-ranked enabled model."""
    chat = ModelRanking.objects.enabled().filter(supports_chat=True)
    model = chat.filter(name=settings.TOKENFLOW_DEFAULT_MODEL).first()
    return model or chat.order_by("rank", "name").first()


def route_select(category: str) -> tuple[ModelRanking, list[ModelRanking], RouteInfo]:
    """(model, fallbacks, info): the highest-priority enabled route whose model is enabled,
    lower priorities as fallbacks, then the default model; 503 if no model is enabled."""
    routes = (
        CategoryRoute.objects.filter(category=category, enabled=True, model__enabled=True)
        .select_related("model")
        .order_by("-priority", "model__rank", "pk")
    )
    models = [r.model for r in routes]
    default = _default_model()
    if default is not None and default.pk not in {m.pk for m in models}:
        models.append(default)
    if not models:
        raise ApiError(
            "No model is enabled: enable one in the admin (Model rankings).",
            code="no_model_available",
            status=503,
        )
    routed = bool(routes)
    if routed:
        reason = ""
    elif CategoryRoute.objects.filter(category=category).exists():
        reason = f"Category {category!r} has no enabled route to an enabled model; default used."
    else:
        reason = f"Category {category!r} has no route; default model {models[0].name!r} used."
    info = RouteInfo(
        category=category, routed=routed, reason=reason, candidates=[m.name for m in models]
    )
    return models[0], models[1:], info
