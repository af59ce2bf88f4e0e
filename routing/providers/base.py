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


# What API clients read for upstream and configuration failures: a stable code and a
# generic message. The provider's own text (which may quote keys or name server
# variables) is kept, redacted, for staff (`ProviderError.detail`, Generation.error_detail).
PUBLIC_MESSAGES = {
    "upstream_timeout": "The upstream provider timed out.",
    "upstream_unreachable": "The upstream provider could not be reached.",
    "rate_limited": "The upstream provider is rate limiting the gateway; retry later.",
    "upstream_error": "The upstream provider failed.",
    "upstream_auth_failed": "The upstream provider refused the gateway's credentials.",
    "upstream_model_not_found": "The upstream provider does not serve this model.",
    "upstream_bad_request": "The upstream provider refused the request as invalid.",
    "provider_not_configured": "This model's provider is not configured on the gateway.",
}


class ProviderError(Exception):
    """An upstream failure. `retryable` ones (429, 5xx, timeouts) may be retried before
    the first token; `status` is the HTTP status the gateway answers with. `message` is
    the provider's own text (staff only, via `detail`); clients get `public_message`."""

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

    @property
    def public_message(self) -> str:
        """Generic for upstream and configuration failures; our own texts (local queue
        full, mock faults) pass through, redacted."""
        from tokenflow_site.redact import redact

        return PUBLIC_MESSAGES.get(self.code) or redact(self.message)

    @property
    def detail(self) -> str:
        """The full text for staff, with anything shaped like a secret masked."""
        from tokenflow_site.redact import redact

        return redact(self.message)


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
