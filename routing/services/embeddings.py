"""Embeddings: resolve an embedding model, embed through its provider, persist the call.

Inputs are stored as SHA-256 hashes only; vectors are kept when
TOKENFLOW_EMBEDDINGS_STORE_VECTORS is on. Tokens count towards the key's rate limit.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import ApiKey
from accounts.ratelimit import rate_limit_add_tokens
from routing.models import Embedding, ModelRanking
from routing.providers.base import EmbeddingRequest, ProviderError
from routing.providers.registry import provider_for
from routing.services.models import capability_check, model_resolve, provider_check
from tokenflow_site.errors import ApiError


@dataclass
class EmbeddingsResult:
    record: Embedding
    vectors: list[list[float]]


def input_sha256(item: Any) -> str:
    """The hash stored for one input (a string, or a token-id list as JSON)."""
    raw = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def embedding_model(name: str) -> ModelRanking:
    """An enabled model with the embeddings capability whose provider is ready."""
    model = model_resolve(name or settings.TOKENFLOW_EMBEDDING_MODEL)
    capability_check(model, ["embeddings"])
    provider_check(model)
    return model


async def embeddings_create(
    *,
    inputs: list[Any],
    model: str,
    api_key: ApiKey | None,
    dimensions: int | None = None,
    user: str | None = None,
    encoding_format: str = "float",
) -> EmbeddingsResult:
    """Embed `inputs` (validated, bounded) with `model` (default TOKENFLOW_EMBEDDING_MODEL);
    ApiError 400/404/503 before any work, or the provider's status if it fails."""
    row = await sync_to_async(embedding_model)(model)
    request = EmbeddingRequest(
        inputs=inputs, model=row.upstream_model, dimensions=dimensions, user=user
    )
    record = Embedding(
        api_key=api_key,
        model=row,
        model_name=row.name,
        provider=row.provider,
        input_count=len(inputs),
        input_sha256=[input_sha256(item) for item in inputs],
        encoding_format=encoding_format,
    )
    started = time.monotonic()
    try:
        result = await provider_for(row).embed(request)
        if len(result.vectors) != len(inputs):
            raise ProviderError(
                f"The upstream returned {len(result.vectors)} vectors for {len(inputs)} inputs.",
                code="upstream_error",
            )
    except ProviderError as exc:
        record.status = Embedding.Status.FAILED
        record.error_code, record.error_message = exc.code, exc.message
        record.duration_ms = (time.monotonic() - started) * 1000
        await record.asave()
        raise ApiError(
            exc.message, code=exc.code, status=exc.status, retry_after=exc.retry_after
        ) from exc
    record.status = Embedding.Status.COMPLETED
    record.duration_ms = (time.monotonic() - started) * 1000
    record.prompt_tokens = result.prompt_tokens
    record.dimensions = len(result.vectors[0]) if result.vectors else None
    if settings.TOKENFLOW_EMBEDDINGS_STORE_VECTORS:
        record.vectors = result.vectors
    await record.asave()
    await sync_to_async(rate_limit_add_tokens)(api_key=api_key, tokens=result.prompt_tokens)
    return EmbeddingsResult(record, result.vectors)
