"""Generation: validate a request, persist a Generation, stream it from a provider.

Every transport (SSE, NDJSON, WebSocket, /v1/chat/completions, fan-out agents, batch
items) consumes the one async iterator of StreamEvents that `generation_run` yields.
"""

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import ApiKey
from accounts.ratelimit import limits_for, tokens_reserve, tokens_settle
from routing import metrics
from routing.classifiers.base import Category
from routing.models import Classification, Generation, ModelRanking, Prompt
from routing.providers.base import ChatRequest, ProviderError
from routing.providers.registry import provider_for
from routing.services.models import AUTO_MODEL, ModelChoice, model_named, provider_check
from routing.services.selection import model_select, prompt_text
from routing.tokens import count_message_tokens, count_tokens
from tokenflow_site.db import UNREACHABLE, db_retry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request (routing.serializers), whatever its transport."""

    messages: list[dict[str, str]]
    model: str  # a model name or "auto"
    params: GenerationParams
    compress: dict[str, Any] | None = None  # compression options, validated
    possible_categories: list[Category] | None = None  # for "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # transport options (stream, ...)


@dataclass
class StreamEvent:
    """type: metadata | text | info | error | end."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


# --- persistence -------------------------------------------------------------------------


def generation_prepare(
    *,
    model: ModelRanking,
    messages: list[dict[str, str]],
    params: GenerationParams,
    api_key: ApiKey | None,
    transport: str,
    source: str = Prompt.Source.API,
    prompt: Prompt | None = None,
    classification: Classification | None = None,
    compression=None,
    check_provider: bool = True,
) -> Generation:
    """Reserve the key's tokens, persist the Prompt (unless given) and a queued Generation.
    Raises ApiError 429 when the request's prompt + max_tokens do not fit the key's
    tokens-per-minute budget."""
    if check_provider:
        provider_check(model)
    reserved = _tokens_reserve(api_key, messages, params)
    if prompt is None:
        prompt = Prompt.objects.create(
            text=prompt_text(messages), messages=messages, source=source, api_key=api_key
        )
    generation = Generation.objects.create(
        prompt=prompt,
        api_key=api_key,
        classification=classification,
        compression=compression,
        model=model,
        model_name=model.name,
        provider=model.provider,
        upstream_model=model.upstream_model,
        transport=transport,
        parameters=params.as_dict(),
        input_messages=messages,
    )
    generation.reserved_tokens = reserved  # settled by _finish (not a column)
    return generation


def _tokens_reserve(
    api_key: ApiKey | None, messages: list[dict[str, str]], params: GenerationParams
) -> int:
    """Reserve prompt + max_tokens against the key's tpm (only keys with a token limit)."""
    if api_key is None or not limits_for(api_key)[1]:
        return 0
    completion = params.max_tokens or settings.TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS
    return tokens_reserve(api_key=api_key, tokens=count_message_tokens(messages) + completion)


async def messages_compress(
    *,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    api_key: ApiKey | None,
    prompt: Prompt,
) -> tuple[list[dict[str, str]], Any]:
    """Compress the last user message (the model runs off the event loop); returns
    (messages to send, Compression row linked to `prompt`)."""
    from compression.services import acompression_create  # the compression app is optional

    index = _last_user_index(messages)
    compression = await acompression_create(
        text=messages[index]["content"], api_key=api_key, prompt=prompt, **options
    )
    compressed = [dict(m) for m in messages]
    compressed[index]["content"] = compression.compressed_text
    return compressed, compression


def _last_user_index(messages: list[dict[str, str]]) -> int:
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return users[-1] if users else len(messages) - 1


@dataclass
class PreparedGeneration:
    """A queued Generation with what its stream needs (fallbacks, extra metadata)."""

    generation: Generation
    choice: ModelChoice

    @property
    def headers(self) -> dict[str, str]:
        return self.choice.headers

    async def events(self) -> AsyncIterator["StreamEvent"]:
        """`generation_run` with the choice's fallbacks; after the metadata event, one
        `info` {"fallback": ...} per route model skipped as not ready."""
        choice = self.choice
        events = generation_run(
            self.generation, fallbacks=choice.fallbacks, metadata=choice.metadata
        )
        async with aclosing(events):
            async for event in events:
                yield event
                if event.type == "metadata":
                    for skip in choice.skipped:
                        yield StreamEvent("info", {"fallback": {"from": skip["model"], **skip}})


async def generation_acreate(
    *,
    request: GenerationRequest,
    api_key: ApiKey | None,
    transport: str,
    source: str = Prompt.Source.API,
) -> PreparedGeneration:
    """Choose the model (a name, or "auto": classify and route), compress if asked, and
    persist a queued Generation. Raises ApiError (404/503) before anything streams.
    The classifier's and compressor's forward passes run in worker threads, never on the
    shared HTTP sync thread."""
    messages = request.messages
    if request.model == AUTO_MODEL:
        selection = await model_select(
            messages=messages,
            categories=request.possible_categories,
            api_key=api_key,
            source=source,
        )
        choice = selection.choice()
    elif request.compress is None:
        # The common case in one thread hop (choose, Prompt, Generation): under hundreds of
        # concurrent streams every hop is a thread switch that delays the others' chunks.
        return await sync_to_async(_generation_create)(
            request=request, api_key=api_key, transport=transport, source=source
        )
    else:
        choice = await sync_to_async(model_named)(request.model)
    prompt = choice.prompt
    compression = None
    if request.compress is not None:
        prompt = prompt or await Prompt.objects.acreate(
            text=prompt_text(messages), messages=messages, source=source, api_key=api_key
        )
        messages, compression = await messages_compress(
            messages=messages, options=request.compress, api_key=api_key, prompt=prompt
        )
    return await sync_to_async(_prepared)(
        choice,
        messages=messages,
        params=request.params,
        api_key=api_key,
        transport=transport,
        source=source,
        prompt=prompt,
        compression=compression,
    )


def _generation_create(
    *, request: GenerationRequest, api_key: ApiKey | None, transport: str, source: str
) -> PreparedGeneration:
    """generation_acreate for a named model without compression, synchronously."""
    return _prepared(
        model_named(request.model),
        messages=request.messages,
        params=request.params,
        api_key=api_key,
        transport=transport,
        source=source,
        prompt=None,
    )


def _prepared(
    choice: ModelChoice,
    *,
    messages: list[dict[str, str]],
    params: GenerationParams,
    api_key: ApiKey | None,
    transport: str,
    source: str,
    prompt: Prompt | None,
    compression=None,
) -> PreparedGeneration:
    """Persist the queued Generation of a model choice, with what its stream needs."""
    generation = generation_prepare(
        model=choice.model,
        messages=messages,
        params=params,
        api_key=api_key,
        transport=transport,
        source=source,
        prompt=prompt,
        classification=choice.classification,
        compression=compression,
        check_provider=False,  # model_choose checked it
    )
    return PreparedGeneration(generation, choice)


def _finish(generation: Generation, status: str, **fields: Any) -> None:
    generation.status = status
    generation.finished_at = timezone.now()
    for name, value in fields.items():
        setattr(generation, name, value)
    generation.save()
    if generation.api_key_id is not None and limits_for(generation.api_key)[1]:
        reserved = getattr(generation, "reserved_tokens", 0)
        prompt = generation.prompt_tokens
        if prompt is None and reserved:  # failed / cancelled: what the prompt cost
            prompt = count_message_tokens(generation.input_messages)
        completion = generation.completion_tokens
        if completion is None:
            completion = count_tokens(generation.output_text) if generation.output_text else 0
        tokens_settle(
            api_key=generation.api_key, reserved=reserved, used=(prompt or 0) + completion
        )
    metrics.GENERATIONS.labels(status=status, provider=generation.provider).inc()
    _jsonl_log(generation)


def _jsonl_log(generation: Generation) -> None:
    path = settings.TOKENFLOW_JSONL_LOG
    if not path:
        return
    line = {
        "timestamp": generation.finished_at.isoformat(),
        "generation_id": generation.pk,
        "model": generation.model_name,
        "provider": generation.provider,
        "status": generation.status,
        "prompt": generation.input_messages,
        "response": generation.output_text,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "ttft_ms": generation.ttft_ms,
        "duration_ms": generation.duration_ms,
        "error": generation.error_message or None,
    }
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    except OSError:
        logger.exception("Cannot write the JSONL log %s", path)


# --- streaming ---------------------------------------------------------------------------


def metadata_for(generation: Generation) -> dict[str, Any]:
    return {
        "generation_id": generation.pk,
        "model": generation.model_name,
        "provider": generation.provider,
        "upstream_model": generation.upstream_model,
    }


def _backoff(attempt: int, retry_after: float | None) -> float:
    base = settings.TOKENFLOW_RETRY_BACKOFF * (2 ** (attempt - 1))
    delay = base * (0.5 + random.random())
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return min(delay, settings.TOKENFLOW_RETRY_MAX_DELAY)


async def _stream_model(
    generation: Generation,
    model: ModelRanking,
    extra: dict[str, Any],
    attempts: list[dict[str, Any]],
    parts: list[str],
    state: dict[str, Any],
) -> AsyncIterator[StreamEvent]:
    """Stream one model, retrying retryable errors while no token has been sent."""
    provider = provider_for(model)
    request = ChatRequest(
        messages=generation.input_messages,
        model=model.upstream_model,
        extra=extra,
        **generation.parameters,
    )
    max_attempts = settings.TOKENFLOW_RETRY_ATTEMPTS
    for attempt in range(1, max_attempts + 1):
        try:
            provider.check_ready()
            async with aclosing(provider.stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.info:
                        yield StreamEvent("info", chunk.info)
                    if chunk.text:
                        first = not parts
                        parts.append(chunk.text)
                        if first:
                            generation.ttft_ms = (time.monotonic() - state["started"]) * 1000
                        yield StreamEvent("text", {"text": chunk.text})
                        if first:
                            metrics.TTFT.labels(provider=model.provider).observe(
                                generation.ttft_ms / 1000
                            )
                            # Persist "streaming" off the token path (one DB write would
                            # delay the next token); _run awaits it before the final save.
                            generation.status = Generation.Status.STREAMING
                            state["marking"] = asyncio.create_task(
                                sync_to_async(_mark_streaming)(generation)
                            )
                    if chunk.finish_reason:
                        state["finish_reason"] = chunk.finish_reason
                    if chunk.usage:
                        state["usage"] = chunk.usage
            return
        except ProviderError as exc:
            attempts.append(
                {"model": model.name, "attempt": attempt, "code": exc.code, "error": exc.message}
            )
            if parts or not exc.retryable or attempt == max_attempts:
                raise
            await asyncio.sleep(_backoff(attempt, exc.retry_after))


def _mark_streaming(generation: Generation) -> None:
    """queued -> streaming (guarded: never overwrites a terminal status)."""
    Generation.objects.filter(pk=generation.pk, status=Generation.Status.QUEUED).update(
        status=Generation.Status.STREAMING,
        ttft_ms=generation.ttft_ms,
        started_at=generation.started_at,
        model=generation.model,
        model_name=generation.model_name,
        provider=generation.provider,
        upstream_model=generation.upstream_model,
    )


async def _settle(state: dict[str, Any]) -> None:
    """Wait for the pending "streaming" write so the final save comes after it."""
    task = state.pop("marking", None)
    if task is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(task)


def _use_model(generation: Generation, model: ModelRanking) -> None:
    generation.model = model
    generation.model_name = model.name
    generation.provider = model.provider
    generation.upstream_model = model.upstream_model


async def generation_run(
    generation: Generation,
    *,
    extra: dict[str, Any] | None = None,
    fallbacks: list[ModelRanking] | None = None,
    metadata: dict[str, Any] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Stream a prepared Generation, persisting every state change; `metadata` is merged
    into the first event.

    Retries retryable provider errors before the first token only; then, still before
    the first token, moves on to the next of `fallbacks` (an `info` event says so). A
    failure after the first token ends with an `error` event and a failed row; closing
    the iterator (client gone, cancel) persists the row as cancelled with its partial
    text and stops the upstream call.
    """
    in_flight = metrics.IN_FLIGHT.labels(transport=generation.transport or "-")
    in_flight.inc()
    try:
        events = _run(generation, extra=extra, fallbacks=fallbacks, metadata=metadata)
        async with aclosing(events):
            async for event in events:
                yield event
    except UNREACHABLE:
        yield _database_unavailable(generation)
    finally:
        in_flight.dec()


def _database_unavailable(generation: Generation) -> StreamEvent:
    """The stream's last event when its final write failed for TOKENFLOW_DB_RETRY_SECONDS
    (the row stays open until the sweeper closes it)."""
    logger.error("Generation %s: database unreachable, its final state is lost", generation.pk)
    return StreamEvent(
        "error",
        {
            "message": "The database is unavailable; this generation was not saved.",
            "code": "database_unavailable",
            "status": 503,
            "generation_id": generation.pk,
        },
    )


async def _run(
    generation: Generation,
    *,
    extra: dict[str, Any] | None,
    fallbacks: list[ModelRanking] | None,
    metadata: dict[str, Any] | None,
) -> AsyncIterator[StreamEvent]:
    yield StreamEvent("metadata", {**metadata_for(generation), **(metadata or {})})
    state: dict[str, Any] = {"started": time.monotonic(), "finish_reason": "stop", "usage": None}
    started = state["started"]
    parts: list[str] = []
    attempts: list[dict[str, Any]] = []
    candidates = [generation.model, *(fallbacks or [])]
    generation.started_at = timezone.now()
    try:
        for index, model in enumerate(candidates):
            try:
                async for event in _stream_model(
                    generation, model, extra or {}, attempts, parts, state
                ):
                    yield event
                break
            except ProviderError as exc:
                if parts or index == len(candidates) - 1 or exc.status in (400, 401, 403, 404):
                    raise
                _use_model(generation, candidates[index + 1])
                yield StreamEvent(
                    "info",
                    {
                        "fallback": {
                            "from": model.name,
                            "to": generation.model_name,
                            "reason": exc.message,
                            "code": exc.code,
                        }
                    },
                )
    except ProviderError as exc:
        await _settle(state)
        await db_retry(
            _finish,
            generation,
            Generation.Status.FAILED,
            output_text="".join(parts),
            error_code=exc.code,
            error_message=exc.message,
            attempts=attempts,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        yield StreamEvent(
            "error",
            {
                "message": exc.message,
                "code": exc.code,
                "status": exc.status,
                "retry_after": exc.retry_after,
                "generation_id": generation.pk,
            },
        )
        return
    except (GeneratorExit, asyncio.CancelledError):
        await _settle(state)
        # The client is gone: nobody to tell if the database stays down (the sweeper closes
        # the row then).
        with contextlib.suppress(*UNREACHABLE):
            await asyncio.shield(
                db_retry(
                    _finish,
                    generation,
                    Generation.Status.CANCELLED,
                    output_text="".join(parts),
                    error_code="cancelled",
                    error_message="The client disconnected or cancelled the generation.",
                    attempts=attempts,
                    duration_ms=(time.monotonic() - started) * 1000,
                )
            )
        raise
    except Exception as exc:
        logger.exception("Generation %s crashed", generation.pk)
        await _settle(state)
        await db_retry(
            _finish,
            generation,
            Generation.Status.FAILED,
            output_text="".join(parts),
            error_code="internal_error",
            error_message=f"{type(exc).__name__}: {exc}",
            attempts=attempts,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        yield StreamEvent(
            "error",
            {
                "message": "Internal error during generation.",
                "code": "internal_error",
                "status": 500,
                "generation_id": generation.pk,
            },
        )
        return
    finish_reason, usage = state["finish_reason"], state["usage"]
    text = "".join(parts)
    usage = usage or {}
    prompt_tokens = usage.get("prompt_tokens") or count_message_tokens(generation.input_messages)
    completion_tokens = usage.get("completion_tokens")
    if completion_tokens is None:
        completion_tokens = count_tokens(text)
    await _settle(state)
    await db_retry(
        _finish,
        generation,
        Generation.Status.COMPLETED,
        output_text=text,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        attempts=attempts,
        duration_ms=(time.monotonic() - started) * 1000,
    )
    yield StreamEvent(
        "end",
        {
            "generation_id": generation.pk,
            "finish_reason": finish_reason,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


async def generation_complete(
    generation: Generation,
    *,
    extra: dict[str, Any] | None = None,
    fallbacks: list[ModelRanking] | None = None,
) -> Generation:
    """Run a generation to its end without streaming (agents, batch items)."""
    async with aclosing(generation_run(generation, extra=extra, fallbacks=fallbacks)) as events:
        async for _event in events:
            pass
    return generation
