"""Routing: which model serves a category, with its fallbacks, from the CategoryRoute table."""

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from routing.classifiers.base import Category
from routing.classifiers.cache import routes_table_version
from routing.models import (
    CategoryExample,
    CategoryRoute,
    ModelRanking,
    RouterAdaptation,
    RouterHead,
)
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


@dataclass(frozen=True)
class RoutingTable:
    """What the classifier needs from the routing table, built once per table version."""

    version: str
    categories: list[Category]
    head: Any = None  # routing.classifiers.embedding.LinearHead of the active RouterHead
    head_engine: str = ""
    # routing.services.adaptation.Adaptation of the active RouterAdaptation rows, newest
    # first, one per label set
    adaptations: tuple = ()

    def adaptation_for(self, labels: list[str]):
        """The newest adaptation that covers every label (case-insensitive), or None."""
        for adaptation in self.adaptations:
            if adaptation.covers(labels):
                return adaptation
        return None

    def expand(self, categories: list[Category]) -> list[Category]:
        """Request categories with neither a description nor examples (bare labels) take
        the table's description and examples of the same label (case-insensitive)."""
        known = {c.label.casefold(): c for c in self.categories}
        expanded = []
        for category in categories:
            table = known.get(category.label.casefold())
            if table is not None and not category.description and not category.examples:
                category = Category(category.label, table.description, table.examples)
            expanded.append(category)
        return expanded


_table_lock = threading.Lock()
_table: RoutingTable | None = None


def _table_build(version: str) -> RoutingTable:
    descriptions: dict[str, str] = {}
    routes = CategoryRoute.objects.filter(enabled=True).order_by("category", "-priority", "pk")
    for category, description in routes.values_list("category", "description"):
        if not descriptions.get(category):
            descriptions[category] = description
    examples: dict[str, list[str]] = {label: [] for label in descriptions}
    limit = settings.TOKENFLOW_MAX_TABLE_EXAMPLES
    rows = CategoryExample.objects.filter(category__in=list(descriptions)).order_by(
        "category", "-created_at", "-pk"
    )
    for category, text in rows.values_list("category", "text"):
        if len(examples[category]) < limit:
            examples[category].append(text)
    categories = [
        Category(label, text, tuple(examples[label])) for label, text in descriptions.items()
    ]
    head, engine = None, ""
    row = RouterHead.objects.filter(active=True).defer("layers").order_by("-pk").first()
    if row is not None:
        head, engine = _head_build(row), row.engine
    return RoutingTable(version, categories, head, engine, _adaptations())


def _adaptations() -> tuple:
    from routing.services.adaptation import Adaptation

    adaptations, seen = [], set()
    for row in RouterAdaptation.objects.filter(active=True).order_by("-pk"):
        key = frozenset(label.casefold() for label in row.labels)
        if key not in seen:
            seen.add(key)
            adaptations.append(Adaptation.from_row(row))
    return tuple(adaptations)


# (pk, created_at) -> FinetunedHead: its layers load once per process (created_at too: a
# rolled-back SQLite transaction can hand the same pk to another row)
_finetuned: dict[tuple, Any] = {}


def _head_build(row: RouterHead):
    weights = np.frombuffer(bytes(row.weights), dtype=np.float32).reshape(len(row.labels), row.dim)
    if row.kind == RouterHead.Kind.FINETUNED:
        key = (row.pk, row.created_at)
        head = _finetuned.get(key)
        if head is None:
            from routing.classifiers.finetune import FinetunedHead

            blob = RouterHead.objects.filter(pk=row.pk).values_list("layers", flat=True).get()
            head = FinetunedHead.from_blob(
                row.labels,
                blob,
                top_layers=row.top_layers,
                prototypes=weights,
                temperature=row.temperature,
                version=row.pk,
            )
            _finetuned.clear()  # only the active one is kept
            _finetuned[key] = head
        return head
    from routing.classifiers.embedding import LinearHead

    return LinearHead(row.labels, weights, np.array(row.bias), version=row.pk)


def routing_table() -> RoutingTable:
    """The enabled categories (best description: the highest-priority enabled route that
    has one; newest examples first) and the active trained head. Cached per process and
    rebuilt when the routes version changes (any route, example or head edit, in any
    process: routing.signals)."""
    global _table
    version = routes_table_version()
    table = _table
    if table is not None and table.version == version:
        return table
    with _table_lock:
        if _table is None or _table.version != version:
            _table = _table_build(version)
        return _table


def routing_categories() -> list[Category]:
    """The enabled categories of the routing table, with descriptions and examples."""
    return list(routing_table().categories)


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
