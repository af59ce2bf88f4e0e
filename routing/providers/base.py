"""The provider contract: a backend turns a ChatRequest into an async stream of Chunks."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """What a provider needs for one call (already validated by the service)."""

    messages: list[dict[str, Any]]  # OpenAI messages (content may be parts; tool calls)
    model: str  # the upstream model id
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # OpenAI request fields forwarded as they are (tools, tool_choice, parallel_tool_calls,
    # response_format, logprobs, top_logprobs, n, user) and `extra_body`: the client's
    # unknown fields this model's allowlist lets through (ModelRanking.passthrough_fields).
    options: dict[str, Any] = field(default_factory=dict)
    # Set by a provider that `signals_open` once the upstream accepted the request (its
    # response headers came): the caller may then start work that would compete with
    # sending it (routing.services.generation.StreamPrefetch). Never sent upstream.
    opened: asyncio.Event | None = field(default=None, compare=False, repr=False)


@dataclass
class Chunk:
    """A piece of streamed text; the last chunk may carry finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    # Informational events (e.g. local queue position) carry no text.
    info: dict[str, Any] | None = None
    # Tool-call deltas as OpenAI streams them: {"index", "id"?, "type"?, "function":
    # {"name"?, "arguments"?}}; the service assembles them by index.
    tool_calls: list[dict[str, Any]] | None = None
    # Token log probabilities of this chunk's text (OpenAI's `logprobs.content` items).
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    """Inputs to embed: strings (or token-id lists, upstream only)."""

    inputs: list[Any]
    model: str  # the upstream model id
    dimensions: int | None = None
    user: str | None = None


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


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

    signals_open = False  # stream() sets request.opened (a network upstream)

    def __init__(self, *, name: str, options: dict[str, Any] | None = None, **config: Any):
        self.name = name
        self.options = options or {}
        self.config = config

    def check_ready(self) -> None:
        """Raise ProviderError (e.g. 503 missing key) before any work is queued."""

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Vectors for `request.inputs` (models with the embeddings capability)."""
        raise ProviderError(
            f"Provider of model '{self.name}' cannot embed.", code="not_supported", status=400
        )

    async def complete(self, request: ChatRequest) -> Chunk:
        """The whole answer as one chunk (non-streaming callers); tool calls assembled."""
        parts, finish_reason, usage = [], None, None
        calls: dict[int, dict[str, Any]] = {}
        async for chunk in self.stream(request):
            parts.append(chunk.text)
            finish_reason = chunk.finish_reason or finish_reason
            usage = chunk.usage or usage
            for delta in chunk.tool_calls or []:
                tool_call_merge(calls, delta)
        return Chunk(
            "".join(parts),
            finish_reason=finish_reason,
            usage=usage,
            tool_calls=[calls[i] for i in sorted(calls)] or None,
        )


def tool_call_merge(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Fold one streamed tool-call delta into `calls` (index -> assembled call): the id,
    type and name arrive once, the arguments in fragments."""
    index = int(delta.get("index") or 0)
    call = calls.setdefault(
        index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]
