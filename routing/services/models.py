"""Model resolution: the one place a request's model name becomes a ModelRanking."""

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from routing.models import Classification, ModelRanking, Prompt
from routing.providers.base import ProviderError
from routing.providers.registry import provider_for
from tokenflow_site.errors import ApiError
from tokenflow_site.rowcache import RowCache

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"


def _models_load(names: list[str]) -> dict[str, tuple[ModelRanking, bool]]:
    """Enabled models by name, each with whether its provider is ready (provider_check)."""
    loaded = {}
    for model in ModelRanking.objects.enabled().filter(name__in=names):
        try:
            provider_for(model).check_ready()
            ready = True
        except ProviderError:
            ready = False
        loaded[model.name] = (model, ready)
    return loaded


# Enabled models by name (tokenflow_site.rowcache: at most 1 s old; an edit in this process
# drops them at once, routing.signals): a request for a named model finds it without a
# query, and on the event loop without a thread hop (`model_cached`).
models_cache: RowCache[str, tuple[ModelRanking, bool]] = RowCache("Model", _models_load)


def model_cached(name: Any, needs: Sequence[str] = ("chat",)) -> ModelRanking | None:
    """The model `model_named` would choose, when this process has it cached, ready and
    capable of `needs`: no I/O, for the event loop. None means "ask model_named" (which
    also gives the precise error)."""
    if not isinstance(name, str):
        return None
    entry = models_cache.fresh_on_loop(name)
    if entry is None or not entry[1] or capabilities_missing(entry[0], needs):
        return None
    return copy.copy(entry[0])


def model_resolve(name: Any) -> ModelRanking:
    """An enabled ModelRanking by name, or 404 listing the available ones."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError("'model' is required.", code="required", field="model")
    entry = models_cache.read(name)
    if entry is not None:
        return copy.copy(entry[0])
    model = ModelRanking.objects.filter(name=name).first()
    if model is None or not model.enabled:
        available = list(ModelRanking.objects.enabled().values_list("name", flat=True))
        state = "disabled" if model else "unknown"
        raise ApiError(
            f"Model {name!r} is {state}. Available: {', '.join(available) or 'none'}.",
            code="model_not_found",
            status=404,
            field="model",
            extra={"available_models": available},
        )
    return model


CAPABILITY_LABELS = {
    "chat": "chat completions",
    "tools": "tools (function calling)",
    "json_object": "response_format json_object",
    "json_schema": "response_format json_schema",
    "vision": "image inputs (vision)",
    "embeddings": "embeddings",
}


def capabilities_missing(model: ModelRanking, needs: Sequence[str]) -> list[str]:
    return [name for name in needs if not model.supports(name)]


def capability_check(model: ModelRanking, needs: Sequence[str]) -> None:
    """400 naming the capabilities `model` lacks (ModelRanking.supports_<name>)."""
    missing = capabilities_missing(model, needs)
    if missing:
        labels = ", ".join(CAPABILITY_LABELS.get(name, name) for name in missing)
        raise ApiError(
            f"Model {model.name!r} does not support {labels}. Pick a model that does "
            '(GET /api/model-rankings lists capabilities) or use model "auto".',
            code="model_lacks_capability",
            status=400,
            field="model",
            extra={"missing_capabilities": missing},
        )


def provider_check(model: ModelRanking) -> None:
    """503 (a generic message and a stable code; the reason is logged for staff) if the
    model's provider cannot serve."""
    try:
        provider_for(model).check_ready()
    except ProviderError as exc:
        logger.warning("Model %s cannot serve: %s", model.name, exc.detail)
        raise ApiError(
            f"Model {model.name!r} cannot serve: {exc.public_message}",
            code=exc.code,
            status=exc.status,
            retry_after=exc.retry_after,
        ) from exc


@dataclass
class ModelChoice:
    """The model a request runs on, the fallbacks to try before the first token, and (for
    routed requests) the classification that chose them."""

    model: ModelRanking
    fallbacks: list[ModelRanking] = field(default_factory=list)
    classification: Classification | None = None
    prompt: Prompt | None = None  # reuse the Prompt a classification already stored
    metadata: dict[str, Any] = field(default_factory=dict)  # merged into the metadata event
    headers: dict[str, str] = field(default_factory=dict)  # e.g. x-tokenflow-route
    skipped: list[dict[str, Any]] = field(default_factory=list)  # route models not ready


def model_named(name: str, needs: Sequence[str] = ("chat",)) -> ModelChoice:
    """The choice for an explicit model name (not "auto"): enabled, capable of `needs`
    and ready, or ApiError."""
    model = model_resolve(name)
    capability_check(model, needs)
    provider_check(model)
    return ModelChoice(model=model)
