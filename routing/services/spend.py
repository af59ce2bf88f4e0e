"""What a model call costs: the model's prices (USD per million tokens) times its tokens."""

from decimal import Decimal

from routing.models import ModelRanking

PER_MTOK = Decimal(1_000_000)


def generation_cost(
    model: ModelRanking | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_prompt_tokens: int | None = 0,
) -> Decimal:
    """USD for these token counts at `model`'s prices. Cached prompt tokens (served from
    the provider's prompt cache) are billed at the cached input price instead."""
    if model is None:
        return Decimal(0)
    cached = min(cached_prompt_tokens or 0, prompt_tokens or 0)
    fresh = (prompt_tokens or 0) - cached
    total = (
        fresh * model.input_price_per_mtok
        + cached * model.cached_input_price_per_mtok
        + (completion_tokens or 0) * model.output_price_per_mtok
    )
    return Decimal(total) / PER_MTOK
