"""The provider contract: a backend turns a ChatRequest into an async stream of Chunks."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """What a provider needs for one call (already validated by the service)."""

    messages: list[dict[str, str]]
    model: str  # the upstream model id
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of streamed text; the last chunk may carry finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    # Informational events (e.g. local queue position) carry no text.
    info: dict[str, Any] | None = None


class ProviderError(Exception):
    """An upstream failure. `retryable` ones (429, 5xx, timeouts) may be retried before
    the first token; `status` is the HTTP status the gateway answers with."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "upstream_error",
        status: int = 502,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class BaseProvider:
    """Subclasses implement `stream`; `check_ready` raises ProviderError if unusable."""

    def __init__(self, *, name: str, options: dict[str, Any] | None = None, **config: Any):
        self.name = name
        self.options = options or {}
        self.config = config

    def check_ready(self) -> None:
        """Raise ProviderError (e.g. 503 missing key) before any work is queued."""

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError

    async def complete(self, request: ChatRequest) -> Chunk:
        """The whole answer as one chunk (non-streaming callers)."""
        parts, last = [], Chunk()
        async for chunk in self.stream(request):
            parts.append(chunk.text)
            last = chunk
        return Chunk("".join(parts), finish_reason=last.finish_reason, usage=last.usage)
