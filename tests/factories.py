"""Factories per model (plain functions: small and explicit)."""

from itertools import count

from routing.models import CategoryRoute, ModelRanking

_seq = count(1)


def mock_model(
    name: str | None = None,
    *,
    rank: int = 100,
    enabled: bool = True,
    context_window: int = 8192,
    **options,
) -> ModelRanking:
    """A mock-provider model; `options` are MockProvider options (response, token_delay...)
    except `supports_*` and `passthrough_fields`, which are the row's capability fields."""
    fields = {
        key: options.pop(key)
        for key in list(options)
        if key.startswith("supports_") or key == "passthrough_fields"
    }
    return ModelRanking.objects.create(
        name=name or f"mock/test-{next(_seq)}",
        provider=ModelRanking.Provider.MOCK,
        upstream_model="echo",
        rank=rank,
        enabled=enabled,
        context_window=context_window,
        options=options,
        **fields,
    )


def route(
    category: str,
    model: ModelRanking,
    *,
    priority: int = 100,
    description: str = "",
    enabled: bool = True,
) -> CategoryRoute:
    return CategoryRoute.objects.create(
        category=category,
        model=model,
        priority=priority,
        description=description,
        enabled=enabled,
    )
