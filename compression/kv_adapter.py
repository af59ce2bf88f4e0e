"""Adapter between llmlingua 0.2.2's legacy KV cache and transformers' `Cache` objects.

llmlingua 0.2.2 (the latest release) passes `past_key_values` into the model as a list of
`(key, value)` tensor pairs, then slices and concatenates those pairs itself. transformers 4.57
expects a `Cache` object in and returns one out. Pinning an old transformers is not an option
(transformers 4.46 converts the SmolLM2 GGUF into a broken model, FACTS.md), so the model's
`forward` is wrapped once: legacy pairs in -> `DynamicCache`, `Cache` out -> legacy pairs.

transformers 5.x drops `DynamicCache.from_legacy_cache` / `to_legacy_cache`; the hand-written
fallbacks below cover that case too.
"""

from __future__ import annotations

import functools
from typing import Any

_ADAPTED = "_tokenflow_legacy_kv"


def legacy_to_cache(past_key_values: Any) -> Any:
    """A list/tuple of (key, value) pairs -> DynamicCache; anything else is returned as is."""
    if not isinstance(past_key_values, list | tuple):
        return past_key_values
    from transformers import DynamicCache

    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(tuple(tuple(kv) for kv in past_key_values))
    cache = DynamicCache()
    for layer_idx, (key, value) in enumerate(past_key_values):
        cache.update(key, value, layer_idx)
    return cache


def cache_to_legacy(cache: Any) -> Any:
    """A `Cache` -> tuple of (key, value) pairs; legacy values and None pass through."""
    if cache is None or isinstance(cache, list | tuple):
        return cache
    if hasattr(cache, "to_legacy_cache"):
        return cache.to_legacy_cache()
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def adapt_legacy_kv(model: Any) -> Any:
    """Wrap `model.forward` (idempotent) so llmlingua's legacy KV handling works; returns model."""
    if getattr(model, _ADAPTED, False):
        return model
    forward = model.forward

    @functools.wraps(forward)
    def legacy_forward(*args: Any, **kwargs: Any) -> Any:
        legacy_in = isinstance(kwargs.get("past_key_values"), list | tuple)
        if legacy_in:
            kwargs["past_key_values"] = legacy_to_cache(kwargs["past_key_values"])
        output = forward(*args, **kwargs)
        if getattr(output, "past_key_values", None) is not None:
            output.past_key_values = cache_to_legacy(output.past_key_values)
        return output

    model.forward = legacy_forward
    setattr(model, _ADAPTED, True)
    return model
