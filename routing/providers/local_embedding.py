"""all-MiniLM-L6-v2 sentence embeddings in this process (the `local/minilm` model).

The model is the classifier's own loaded copy (routing.classifiers.minilm): one load per
process whether it classifies, embeds or both. Vectors are mean-pooled and L2-normalised
(384 dimensions), the way sentence-transformers computes all-MiniLM-L6-v2; the forward
passes run in a worker thread, never on the event loop.
"""

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async

from routing.providers.base import (
    BaseProvider,
    ChatRequest,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    ProviderError,
)

DIMENSIONS = 384


def _embed(texts: list[str]) -> tuple[list[list[float]], int]:
    from routing.classifiers import minilm

    vectors, tokens = minilm().embed_counted(texts)
    return vectors.tolist(), tokens


class LocalEmbeddingProvider(BaseProvider):
    """Embeddings only: a chat request is a 400 (its row declares no chat capability)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise ProviderError(
            f"Model '{self.name}' is an embedding model; it cannot chat.",
            code="not_supported",
            status=400,
        )
        yield Chunk()  # pragma: no cover (makes this an async generator)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if not all(isinstance(text, str) for text in request.inputs):
            raise ProviderError(
                f"Model '{self.name}' embeds text; token-id inputs are not supported.",
                code="invalid_input",
                status=400,
            )
        if request.dimensions is not None and request.dimensions != DIMENSIONS:
            raise ProviderError(
                f"Model '{self.name}' has {DIMENSIONS} dimensions; 'dimensions' cannot "
                "change that.",
                code="invalid_dimensions",
                status=400,
            )
        # thread_sensitive=False: a forward pass must not hold the shared sync thread.
        vectors, tokens = await sync_to_async(_embed, thread_sensitive=False)(request.inputs)
        return EmbeddingResult(vectors, prompt_tokens=tokens)
