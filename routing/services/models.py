"""Model resolution: the one place a request's model name becomes a ModelRanking."""

import logging
from dataclasses import dataclass, field
from typing import Any

from routing.models import Classification, ModelRanking, Prompt
from routing.providers.base import ProviderError
from routing.providers.registry import provider_for
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"


def model_resolve(name: Any) -> ModelRanking:
    """An enabled ModelRanking by name, or 404 listing the available ones."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError("'model' is required.", code="required", field="model")
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


def model_named(name: str) -> ModelChoice:
    """The choice for an explicit model name (not "auto"): enabled and ready, or ApiError."""
    model = model_resolve(name)
    provider_check(model)
    return ModelChoice(model=model)
