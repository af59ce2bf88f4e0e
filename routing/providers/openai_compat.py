"""Any OpenAI-compatible server (OpenAI, Groq, OpenRouter, vLLM, Ollama, LM Studio) via the SDK.

The SDK's own retries are off (`max_retries=0`): the generation service retries retryable
errors itself, and only before the first token. One AsyncOpenAI client (one connection
pool) is kept per (event loop, base URL, key).
"""

import asyncio
import email.utils
import os
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from routing.providers.base import (
    BaseProvider,
    ChatRequest,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    ProviderError,
)
from routing.providers.safety import api_key_env_problem, base_url_problem

# Clients hold connections bound to the loop that opened them: one pool per loop.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Any]]" = (
    weakref.WeakKeyDictionary()
)
NO_KEY = "not-needed"  # local servers (vLLM, Ollama) accept any key
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
)
# ChatRequest.options that go upstream as named arguments (validated by the serializer).
FORWARDED_FIELDS = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "n",
        "user",
    }
)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or HTTP date), else None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def error_from_sdk(exc: Exception) -> ProviderError:
    """Map an `openai` SDK exception to a ProviderError (429/5xx/timeouts retryable)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(
            "The upstream provider timed out.", code="upstream_timeout", status=504, retryable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            f"Cannot reach the upstream provider: {exc}",
            code="upstream_unreachable",
            status=502,
            retryable=True,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers)
        message = f"Upstream answered {status}: {exc.message}"
        if status == 429:
            return ProviderError(
                message, code="rate_limited", status=429, retryable=True, retry_after=retry_after
            )
        if status >= 500:
            return ProviderError(
                message, code="upstream_error", status=502, retryable=True, retry_after=retry_after
            )
        if status in (401, 403):
            return ProviderError(message, code="upstream_auth_failed", status=502)
        if status == 404:
            return ProviderError(message, code="upstream_model_not_found", status=502)
        return ProviderError(message, code="upstream_bad_request", status=400)
    if isinstance(exc, openai.APIError):  # an error payload in the middle of a stream
        return ProviderError(f"Upstream error: {exc.message}", code="upstream_error")
    return ProviderError(f"Upstream error: {exc}", code="upstream_error")


def client_for(base_url: str, api_key: str):
    """The pooled AsyncOpenAI client of the running loop for this endpoint and key."""
    # The SDK (httpx, pydantic) is imported on first use, not at Django start-up.
    import openai

    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get((base_url, api_key))
    if client is None:
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=openai.Timeout(
                settings.TOKENFLOW_UPSTREAM_READ_TIMEOUT,
                connect=settings.TOKENFLOW_UPSTREAM_CONNECT_TIMEOUT,
            ),
        )
        per_loop[(base_url, api_key)] = client
    return client


async def clients_close() -> None:
    """Close the running loop's pooled clients (tests, shutdown)."""
    per_loop = _clients.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client.close()


class OpenAICompatProvider(BaseProvider):
    """Streams chat completions; base URL and key from the model row or the provider table."""

    signals_open = True

    def _base_url(self) -> str:
        endpoint = self.config.get("endpoint") or {}
        env_name = endpoint.get("base_url_env")
        return (
            self.config.get("base_url")
            or (os.environ.get(env_name) if env_name else None)
            or endpoint.get("base_url")
            or ""
        )

    def _api_key(self) -> str:
        env_name = self.config.get("api_key_env") or ""
        return os.environ.get(env_name, "") if env_name else NO_KEY

    def check_ready(self) -> None:
        env_name = self.config.get("api_key_env") or ""
        problem = api_key_env_problem(env_name) or base_url_problem(self.config.get("base_url"))
        if problem:
            raise ProviderError(
                f"Model '{self.name}' is misconfigured: {problem}",
                code="provider_not_configured",
                status=503,
            )
        if env_name and not os.environ.get(env_name):
            raise ProviderError(
                f"Provider '{self.config.get('provider', self.name)}' is not configured: "
                f"set the environment variable {env_name}.",
                code="provider_not_configured",
                status=503,
            )
        if not self._base_url():
            raise ProviderError(
                f"Model '{self.name}' has no base URL: set ModelRanking.base_url.",
                code="provider_not_configured",
                status=503,
            )

    @staticmethod
    def _arguments(request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {"model": request.model, "messages": request.messages}
        for name in SAMPLING_FIELDS:
            value = getattr(request, name)
            if value is not None:
                arguments[name] = value
        options = dict(request.options)
        extra_body = options.pop("extra_body", None)
        arguments.update({k: v for k, v in options.items() if k in FORWARDED_FIELDS})
        if extra_body:
            arguments["extra_body"] = extra_body  # the SDK merges it into the JSON body
        return arguments

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        import openai

        self.check_ready()
        client = client_for(self._base_url(), self._api_key())
        arguments: dict[str, Any] = {
            "model": request.model,
            "input": request.inputs,
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            arguments["dimensions"] = request.dimensions
        if request.user:
            arguments["user"] = request.user
        try:
            response = await client.embeddings.create(**arguments)
        except openai.OpenAIError as exc:
            raise error_from_sdk(exc) from exc
        rows = sorted(response.data, key=lambda row: row.index)
        usage = response.usage.prompt_tokens if response.usage is not None else 0
        return EmbeddingResult([list(row.embedding) for row in rows], prompt_tokens=usage)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks of one streamed chat completion. The SDK makes the request, maps HTTP
        errors and decodes the SSE (error payloads mid-stream included), but each chunk is
        read as the plain JSON dict (`cast_to=object`): building the SDK's pydantic
        ChatCompletionChunk per chunk cost ~0.2 ms of CPU, most of the gateway's per-chunk
        overhead."""
        import openai

        self.check_ready()
        client = client_for(self._base_url(), self._api_key())
        arguments = self._arguments(request)
        extra_body = arguments.pop("extra_body", None) or {}
        body = {
            **arguments,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra_body,  # merged last, as the SDK's extra_body is
        }
        try:
            response = await client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.OpenAIError as exc:
            raise error_from_sdk(exc) from exc
        if request.opened is not None:
            request.opened.set()
        # Closing this generator (cancel, disconnect) closes the HTTP response upstream.
        async with response:
            try:
                async for event in response:
                    chunk = chunk_from_event(event)
                    if chunk is not None:
                        yield chunk
            except openai.OpenAIError as exc:
                raise error_from_sdk(exc) from exc


def _without_none(value: Any) -> Any:
    """A JSON value with the null members of its objects dropped (at every depth)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def chunk_from_event(event: Any) -> Chunk | None:
    """The Chunk of one `chat.completion.chunk` JSON object, or None when it carries
    nothing (a role-only delta, keep-alive objects)."""
    if not isinstance(event, dict):
        return None
    usage = None
    raw_usage = event.get("usage")
    if isinstance(raw_usage, dict):
        usage = {
            "prompt_tokens": raw_usage.get("prompt_tokens"),
            "completion_tokens": raw_usage.get("completion_tokens"),
        }
        details = raw_usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens"):
            usage["prompt_tokens_details"] = {"cached_tokens": details["cached_tokens"]}
    choices = event.get("choices")
    if not choices:
        return Chunk(usage=usage) if usage else None
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    text = delta.get("content") or ""
    calls = delta.get("tool_calls")
    calls = [_without_none(call) for call in calls] if calls else None
    logprobs = (choice.get("logprobs") or {}).get("content")
    logprobs = [_without_none(item) for item in logprobs] if logprobs else None
    finish_reason = choice.get("finish_reason")
    if text or calls or logprobs or finish_reason or usage:
        return Chunk(
            text, finish_reason=finish_reason, usage=usage, tool_calls=calls, logprobs=logprobs
        )
    return None
