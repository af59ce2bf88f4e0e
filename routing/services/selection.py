"""Automatic model selection: classify the prompt, route the category, keep ready models.

Every generation transport uses it for `model: "auto"` (`generation_acreate` ->
`model_select`; POST /api/models/select is /api/generate with model "auto"), and batch
items with model "auto" use `model_for_messages`. It knows nothing of generation.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from routing.classifiers.base import Category
from routing.messages import content_text, message_text
from routing.models import Classification, ModelRanking, Prompt
from routing.providers.base import ProviderError
from routing.providers.registry import provider_for
from routing.services.classification import classification_acreate, classification_create
from routing.services.models import ModelChoice, capabilities_missing
from routing.services.routes import RouteInfo, route_select
from tokenflow_site.errors import ApiError

ROUTE_HEADER = "x-tokenflow-route"


@dataclass
class Selection:
    """The classification, the chosen model, its ready fallbacks and why."""

    classification: Classification
    model: ModelRanking
    fallbacks: list[ModelRanking]
    route: RouteInfo
    # Route candidates whose provider cannot serve (missing key, ...), in route order.
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Merged into the first `metadata` event of the stream."""
        c = self.classification
        return {
            "selected_model": self.model.name,
            "top_category": c.top_category,
            "confidence": c.confidence,
            "scores": c.scores,
            "classification_id": c.pk,
            "engine": c.engine,
            "route": self.route.as_dict(),
            "fallbacks": [m.name for m in self.fallbacks],
            "skipped": self.skipped,
        }

    def choice(self) -> ModelChoice:
        """As the model choice of a generation request (model "auto")."""
        return ModelChoice(
            model=self.model,
            fallbacks=self.fallbacks,
            classification=self.classification,
            prompt=self.classification.prompt,
            metadata=self.metadata(),
            headers={ROUTE_HEADER: self.header()},
            skipped=self.skipped,
        )

    def header(self) -> str:
        """The `x-tokenflow-route` header: `category=..;model=..;confidence=..;routed=..`."""
        parts = {
            "category": self.classification.top_category,
            "model": self.model.name,
            "confidence": f"{self.classification.confidence:.4f}",
            "routed": "true" if self.route.routed else "false",
            "classification": str(self.classification.pk),
        }
        return ";".join(f"{key}={quote(value, safe='/.-_')}" for key, value in parts.items())


def _ready(model: ModelRanking) -> dict[str, Any] | None:
    """None if the model's provider can serve, else why not."""
    try:
        provider_for(model).check_ready()
    except ProviderError as exc:
        return {"model": model.name, "code": exc.code, "reason": exc.public_message}
    except ImportError as exc:
        return {"model": model.name, "code": "provider_unavailable", "reason": str(exc)}
    return None


def _capable(model: ModelRanking, needs: Sequence[str]) -> dict[str, Any] | None:
    """None if the model has every capability in `needs`, else why not."""
    missing = capabilities_missing(model, needs)
    if not missing:
        return None
    return {
        "model": model.name,
        "code": "missing_capability",
        "reason": f"does not support {', '.join(missing)}",
        "missing": missing,
    }


def _capable_models(needs: Sequence[str], exclude: set[int]) -> list[ModelRanking]:
    """Enabled models outside the route with every capability, best rank first."""
    models = ModelRanking.objects.enabled().exclude(pk__in=exclude).order_by("rank", "name")
    return [m for m in models if not capabilities_missing(m, needs)]


def _route(
    category: str, needs: Sequence[str] = ("chat",)
) -> tuple[ModelRanking, list[ModelRanking], RouteInfo, list[dict]]:
    """route_select, keeping only models that have the capabilities the request needs and
    whose provider is ready (no network call). When no model of the route can serve, the
    best-ranked enabled models that can are used for a request that needs more than chat
    (said in the route's reason)."""
    model, fallbacks, info = route_select(category)
    route = [model, *fallbacks]
    ready: list[ModelRanking] = []
    skipped: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # skipped models waiting for the next ready one

    def consider(candidates: list[ModelRanking]) -> None:
        nonlocal pending
        for candidate in candidates:
            problem = _capable(candidate, needs) or _ready(candidate)
            if problem:
                skipped.append(problem)
                pending.append(problem)
                continue
            ready.append(candidate)
            for skip in pending:
                skip["to"] = candidate.name
            pending = []

    consider(route)
    if not ready and set(needs) - {"chat"}:  # a plain chat keeps to its route
        others = _capable_models(needs, {m.pk for m in route})
        consider(others)
        if ready:
            info.routed = False
            info.reason = (
                f"No model of the route for {category!r} can serve this request "
                f"(needs {', '.join(needs)}); best-ranked capable model {ready[0].name!r} used."
            )
            info.candidates = [m.name for m in route + others]
    if not ready and all(s["code"] == "missing_capability" for s in skipped):
        raise ApiError(
            f"No enabled model supports {', '.join(needs)}: enable one in the admin "
            "(Model rankings, capabilities).",
            code="no_capable_model",
            status=400,
            extra={"skipped": skipped, "needs": list(needs)},
        )
    if not ready:
        reasons = "; ".join(f"{s['model']}: {s['reason']}" for s in skipped)
        raise ApiError(
            f"No model of the route for {category!r} can serve: {reasons}",
            code="no_model_available",
            status=503,
            extra={"skipped": skipped},
        )
    return ready[0], ready[1:], info, skipped


def prompt_text(messages: list[dict]) -> str:
    """The text a Prompt row stores and the classifier reads: the last user message (its
    text parts, for structured content)."""
    users = [content_text(m.get("content")) for m in messages if m["role"] == "user"]
    return users[-1] if users else "\n".join(message_text(m) for m in messages)


async def model_select(
    *,
    messages: list[dict[str, str]],
    categories: list[Category] | None = None,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
    needs: Sequence[str] = ("chat",),
) -> Selection:
    """Classify the last user message (persisted, with its Prompt; the forward pass runs
    in a worker thread) and route its top category. Raises ApiError: 503 no model
    enabled / ready."""
    classification = await classification_acreate(
        prompt=prompt_text(messages),
        categories=categories,
        api_key=api_key,
        source=source,
        messages=messages,
    )
    route = await sync_to_async(_route)(classification.top_category, needs)
    return Selection(classification, *route)


def model_select_sync(
    *,
    messages: list[dict[str, str]],
    categories: list[Category] | None = None,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
) -> Selection:
    """`model_select` for sync callers (batch workers; the classifier runs in the calling
    thread)."""
    classification = classification_create(
        prompt=prompt_text(messages),
        categories=categories,
        api_key=api_key,
        source=source,
        messages=messages,
    )
    return Selection(classification, *_route(classification.top_category))


def model_for_messages(
    messages: list[dict[str, str]], *, source: str = Prompt.Source.BATCH
) -> ModelRanking:
    """The routed model for `messages` (batch items with model "auto")."""
    return model_select_sync(messages=messages, source=source).model
