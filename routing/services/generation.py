"""Generation: validate a request, persist a Generation, stream it from a provider.

Every transport (SSE, NDJSON, WebSocket, /v1/chat/completions, fan-out agents, batch
items) consumes the one async iterator of StreamEvents that `generation_run` yields.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import ApiKey
from accounts.ratelimit import (
    limits_for,
    rate_limits_in_process,
    streams_acquire,
    streams_release,
    tokens_reserve,
    tokens_settle,
)
from response_cache.services import (
    CachePlan,
    cache_headers,
    cache_hit_count,
    cache_hit_fields,
    cache_metadata,
    cache_plan,
    cache_probe,
    cache_resolve,
    cache_store_later,
    storable,
)
from routing import metrics
from routing.classifiers.base import Category
from routing.messages import capabilities_needed, message_text
from routing.models import Classification, Generation, ModelRanking, Prompt
from routing.providers.base import ChatRequest, Chunk, ProviderError, tool_call_merge
from routing.providers.registry import provider_for
from routing.services.cancel import CancelRequested, generation_cancel_requested
from routing.services.models import (
    AUTO_MODEL,
    ModelChoice,
    model_cached,
    model_named,
    provider_check,
)
from routing.services.retry import backoff_delay
from routing.services.selection import model_select, prompt_text
from routing.services.spend import (
    budget_check,
    budget_reserve,
    budget_settle,
    generation_cost,
    has_budget,
    worst_case_cost,
)
from routing.tokens import count_message_tokens, count_tokens
from tokenflow_site.db import UNREACHABLE, db_retry
from tokenflow_site.errors import ApiError
from tokenflow_site.redact import redact

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request (routing.serializers), whatever its transport."""

    messages: list[dict[str, Any]]  # OpenAI messages (/v1 keeps parts and tool calls)
    model: str  # a model name or "auto"
    params: GenerationParams
    compress: dict[str, Any] | None = None  # compression options, validated
    possible_categories: list[Category] | None = None  # for "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # transport options (stream, ...)
    # OpenAI fields forwarded upstream (tools, response_format, ...); `extra_body` holds
    # the unknown fields, forwarded only to models whose passthrough_fields list them.
    options: dict[str, Any] = field(default_factory=dict)
    # Response cache: None = default (temperature 0 only), True = opt in, False = skip.
    cache: bool | None = None

    @property
    def needs(self) -> list[str]:
        """The model capabilities this request needs (routing.messages.CAPABILITIES)."""
        return capabilities_needed(self.messages, self.options)


@dataclass
class StreamEvent:
    """type: metadata | text | tool_call | info | error | end. A `tool_call` event is one
    OpenAI tool-call delta ({"index", "id"?, "type"?, "function": {"name"?, "arguments"?}});
    `end` carries the assembled `tool_calls` when the model made any."""

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
    options: dict[str, Any] | None = None,
) -> Generation:
    """Check the context window, reserve the key's tokens, persist the Prompt (unless
    given) and a queued Generation. Raises ApiError 400 when prompt + max_tokens exceed
    the model's context window, 429 when they do not fit the key's tokens per minute."""
    if check_provider:
        provider_check(model)
    admission = generation_admit(model=model, messages=messages, params=params, api_key=api_key)
    try:
        return generation_persist(
            admission,
            transport=transport,
            source=source,
            prompt=prompt,
            classification=classification,
            compression=compression,
            options=options,
        )
    except BaseException:
        admission.release()
        raise


@dataclass
class Admission:
    """What a request holds once admitted, before any upstream call: its stream slot, its
    reserved tokens and its budget hold (settled or released by _finish)."""

    model: ModelRanking
    messages: list[dict[str, Any]]
    params: GenerationParams
    api_key: ApiKey | None
    prompt_tokens: int
    slot: str | None = None
    reserved: int = 0
    hold: Any = None

    def release(self) -> None:
        """Give everything back (the request was refused or never persisted)."""
        if self.slot is not None:
            streams_release(api_key_id=self.api_key.pk, stream_id=self.slot)
        if self.reserved:
            tokens_settle(api_key=self.api_key, reserved=self.reserved, used=0)
        if self.hold is not None:
            budget_settle(self.hold, 0)


def generation_admit(
    *,
    model: ModelRanking,
    messages: list[dict[str, Any]],
    params: GenerationParams,
    api_key: ApiKey | None,
) -> Admission:
    """The checks every generation passes before its upstream call: the context window
    (400), the key's open streams and tokens per minute (429) and its budget (429
    budget_exceeded). Only the budget may do I/O (the shared cache)."""
    prompt_tokens = count_message_tokens(messages)
    context_check(model, prompt_tokens, params)
    admission = Admission(model, messages, params, api_key, prompt_tokens)
    slot = uuid.uuid4().hex
    if streams_acquire(api_key=api_key, stream_id=slot):
        admission.slot = slot
    try:
        admission.reserved = _tokens_reserve(api_key, prompt_tokens, params)
        if has_budget(api_key):
            admission.hold = budget_reserve(
                api_key=api_key,
                amount=worst_case_cost(model, prompt_tokens, params.max_tokens),
            )
    except ApiError:
        admission.release()
        raise
    return admission


def generation_persist(
    admission: Admission,
    *,
    transport: str,
    source: str,
    prompt: Prompt | None = None,
    classification: Classification | None = None,
    compression=None,
    options: dict[str, Any] | None = None,
) -> Generation:
    """Insert the Prompt (unless given) and the queued Generation of an admitted request."""
    model, messages, api_key = admission.model, admission.messages, admission.api_key
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
        parameters=admission.params.as_dict(),
        options=options or {},
        input_messages=messages,
    )
    # Settled / released by _finish, reused instead of counting again (not columns).
    generation.reserved_tokens = admission.reserved
    generation.budget_hold = admission.hold
    generation.stream_slot = admission.slot
    generation.prompt_tokens_estimate = admission.prompt_tokens
    return generation


def _prompt_estimate(generation: Generation) -> int:
    """The prompt's token count: counted once by generation_prepare (rows prepared
    elsewhere are counted here, once)."""
    estimate = getattr(generation, "prompt_tokens_estimate", None)
    if estimate is None:
        estimate = count_message_tokens(generation.input_messages)
        generation.prompt_tokens_estimate = estimate
    return estimate


def context_fits(model: ModelRanking, prompt_tokens: int, params: GenerationParams) -> bool:
    return prompt_tokens + (params.max_tokens or 1) <= model.context_window


def context_check(model: ModelRanking, prompt_tokens: int, params: GenerationParams) -> None:
    """400 `context_length_exceeded` naming the numbers (OpenAI's code) when the prompt
    plus max_tokens do not fit the model's context window."""
    if context_fits(model, prompt_tokens, params):
        return
    asked = f"{prompt_tokens} prompt tokens"
    if params.max_tokens:
        asked += f" + {params.max_tokens} max_tokens = {prompt_tokens + params.max_tokens}"
    raise ApiError(
        f"Model {model.name!r} has a context window of {model.context_window} tokens; "
        f"this request needs {asked}.",
        code="context_length_exceeded",
        field="max_tokens" if params.max_tokens else "messages",
        extra={"context_window": model.context_window, "prompt_tokens": prompt_tokens},
    )


def _tokens_reserve(api_key: ApiKey | None, prompt_tokens: int, params: GenerationParams) -> int:
    """Reserve prompt + max_tokens against the key's tpm (only keys with a token limit)."""
    if api_key is None or not limits_for(api_key)[1]:
        return 0
    completion = params.max_tokens or settings.TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS
    return tokens_reserve(api_key=api_key, tokens=prompt_tokens + completion)


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
    if index is None:  # nothing plain to compress (e.g. only image parts): sent as is
        return messages, None
    compression = await acompression_create(
        text=messages[index]["content"], api_key=api_key, prompt=prompt, **options
    )
    compressed = [dict(m) for m in messages]
    compressed[index]["content"] = compression.compressed_text
    return compressed, compression


def _last_user_index(messages: list[dict[str, Any]]) -> int | None:
    """The last user message if its content is a string (else the last string message)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    candidates = users[-1:] or list(range(len(messages)))[-1:]
    return next((i for i in candidates if isinstance(messages[i].get("content"), str)), None)


@dataclass
class PreparedGeneration:
    """A queued Generation with what its stream needs (fallbacks, extra metadata)."""

    generation: Generation
    choice: ModelChoice

    @property
    def headers(self) -> dict[str, str]:
        return {**self.choice.headers, **cache_headers(self.generation)}

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
    prefetch: bool = True,
) -> PreparedGeneration:
    """Choose the model (a name, or "auto": classify and route), compress if asked, and
    persist a queued Generation. Raises ApiError (404/503) before anything streams.
    `prefetch`: the common request may start its upstream call while its rows are
    written (`_prepared_on_loop`); the caller runs the generation right away.
    The classifier's and compressor's forward passes run in worker threads, never on the
    shared HTTP sync thread.

    The response cache is consulted here, once for every transport: a hit is replayed by
    `generation_run` instead of calling the model (see response_cache.services)."""
    plan = _cache_plan(request)
    if prefetch and plan is None and request.model != AUTO_MODEL and request.compress is None:
        prepared = await _prepared_on_loop(
            request=request, api_key=api_key, transport=transport, source=source
        )
        if prepared is not None:
            return prepared
    prepared = await _generation_acreate(
        request=request, api_key=api_key, transport=transport, source=source, plan=plan
    )
    if plan is not None:
        await cache_resolve(plan, prepared.generation)
    return prepared


async def _prepared_on_loop(
    *, request: GenerationRequest, api_key: ApiKey | None, transport: str, source: str
) -> PreparedGeneration | None:
    """The common request (a named model this process has cached, rate limits kept in the
    process, no budget, nothing to look up in the response cache) with no thread hop before
    its upstream call: admitted on the event loop, its model's stream started at once
    (StreamPrefetch), and its Prompt and queued Generation inserted in a thread meanwhile.
    A failed insert stops that stream and gives the admission back. None: take the
    general path."""
    if has_budget(api_key) or not rate_limits_in_process():
        return None
    model = model_cached(request.model, request.needs)
    if model is None:
        return None
    admission = generation_admit(
        model=model, messages=request.messages, params=request.params, api_key=api_key
    )
    prefetch = StreamPrefetch(
        model,
        _chat_request(model, request.messages, request.params.as_dict(), request.options, {}),
    )
    await prefetch.head_start()
    try:
        generation = await sync_to_async(generation_persist)(
            admission, transport=transport, source=source, options=request.options
        )
    except BaseException:
        await prefetch.aclose()
        admission.release()
        raise
    generation.prefetch = prefetch
    return PreparedGeneration(generation, ModelChoice(model=model))


class StreamPrefetch:
    """A model's stream started before its Generation row exists: a task awaits the first
    chunk while the row is inserted, so that thread hop overlaps the upstream's time to
    first token. `_stream_model` takes it for its first attempt on that model."""

    # At most this long, the insert waits for the upstream to accept the request: its
    # thread would otherwise hold the GIL while the event loop sends it (measured: headers
    # 2.8 ms after the call started instead of 1.8 ms).
    HEAD_START_SECONDS = 0.005

    def __init__(self, model: ModelRanking, request: ChatRequest) -> None:
        self.model = model
        self.started = time.monotonic()
        self.started_at = timezone.now()
        provider = provider_for(model)
        self._opened = asyncio.Event() if provider.signals_open else None
        self._stream = provider.stream(dataclasses.replace(request, opened=self._opened))
        self._first = asyncio.ensure_future(anext(self._stream))

    async def head_start(self) -> None:
        """Until the upstream accepted the request (or failed, or HEAD_START_SECONDS)."""
        if self._opened is None:
            return
        opened = asyncio.ensure_future(self._opened.wait())
        await asyncio.wait(
            {opened, self._first}, timeout=self.HEAD_START_SECONDS, return_when="FIRST_COMPLETED"
        )
        opened.cancel()

    async def chunks(self) -> AsyncIterator[Chunk]:
        try:
            try:
                first = await self._first
            except StopAsyncIteration:
                return
            yield first
            async for chunk in self._stream:
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._first.done():
            self._first.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._first
        await self._stream.aclose()


def _prefetch_take(generation: Generation, model: ModelRanking) -> StreamPrefetch | None:
    prefetch = getattr(generation, "prefetch", None)
    if prefetch is None or prefetch.model.pk != model.pk:
        return None
    generation.prefetch = None
    return prefetch


async def _prefetch_close(generation: Generation) -> None:
    """A prefetched stream its generation never used (closed before it ran)."""
    prefetch = getattr(generation, "prefetch", None)
    if prefetch is not None:
        generation.prefetch = None
        await prefetch.aclose()


def _chat_request(
    model: ModelRanking,
    messages: list[dict[str, Any]],
    parameters: dict[str, Any],
    options: dict[str, Any] | None,
    extra: dict[str, Any],
) -> ChatRequest:
    return ChatRequest(
        messages=messages,
        model=model.upstream_model,
        extra=extra,
        options=model_options(options, model),
        **parameters,
    )


def _cache_plan(request: GenerationRequest) -> CachePlan | None:
    return cache_plan(
        messages=request.messages,
        params=request.params.as_dict(),
        options=request.options,
        compress=request.compress,
        cache=request.cache,
        choices=request.extra.get("n") or 1,
    )


async def _generation_acreate(
    *,
    request: GenerationRequest,
    api_key: ApiKey | None,
    transport: str,
    source: str,
    plan: CachePlan | None,
) -> PreparedGeneration:
    messages = request.messages
    if has_budget(api_key) and (request.model == AUTO_MODEL or request.compress is not None):
        # Refuse a spent key before the classifier or the compressor runs.
        await sync_to_async(budget_check)(api_key=api_key)
    if request.model == AUTO_MODEL:
        selection = await model_select(
            messages=messages,
            categories=request.possible_categories,
            api_key=api_key,
            source=source,
            needs=request.needs,
        )
        choice = selection.choice()
    elif request.compress is None:
        # The common case in one thread hop (choose, Prompt, Generation): under hundreds of
        # concurrent streams every hop is a thread switch that delays the others' chunks.
        return await sync_to_async(_generation_create)(
            request=request, api_key=api_key, transport=transport, source=source, plan=plan
        )
    else:
        choice = await sync_to_async(model_named)(request.model, request.needs)
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
        options=request.options,
        plan=plan,
    )


async def generation_acreate_many(
    *,
    request: GenerationRequest,
    api_key: ApiKey | None,
    transport: str,
    source: str = Prompt.Source.API,
    n: int = 1,
) -> list[PreparedGeneration]:
    """`n` generations of one request (OpenAI's `n`): the model choice (routing), the
    Prompt and any compression are made once by `generation_acreate`, then n - 1 more
    queued Generations of the same prepared request, each with its own stream slot and
    token reservation. If one of them is refused (429), the ones already prepared are
    closed as cancelled (slots and tokens given back) and the error is raised."""
    first = await generation_acreate(
        request=request, api_key=api_key, transport=transport, source=source, prefetch=n <= 1
    )
    if n <= 1:
        return [first]
    return await sync_to_async(_prepared_more)(
        first, n - 1, request=request, api_key=api_key, transport=transport, source=source
    )


def _prepared_more(
    first: PreparedGeneration,
    count: int,
    *,
    request: GenerationRequest,
    api_key: ApiKey | None,
    transport: str,
    source: str,
) -> list[PreparedGeneration]:
    prepared = [first]
    try:
        for _ in range(count):
            prepared.append(
                _prepared(
                    first.choice,
                    messages=first.generation.input_messages,
                    params=request.params,
                    api_key=api_key,
                    transport=transport,
                    source=source,
                    prompt=first.generation.prompt,
                    compression=first.generation.compression,
                    options=request.options,
                )
            )
    except ApiError as exc:
        for item in prepared:
            _finish(
                item.generation,
                Generation.Status.CANCELLED,
                error_code=exc.code,
                error_message=f"Not run: another choice of the request was refused ({exc.code}).",
            )
        raise
    return prepared


async def events_interleaved(
    prepared: list[PreparedGeneration],
) -> AsyncIterator[tuple[int, StreamEvent]]:
    """(index, event) of the prepared generations' event streams, run concurrently and
    interleaved as their events come (one stream: no task, no queue). Closing it (client
    gone) cancels every stream; each persists itself as cancelled, and one that never
    started is closed as cancelled here."""
    if len(prepared) == 1:
        async with aclosing(prepared[0].events()) as events:
            async for event in events:
                yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=8 * len(prepared))

    async def pump(index: int, item: PreparedGeneration) -> None:
        try:
            async with aclosing(item.events()) as events:
                async for event in events:
                    await queue.put((index, event))
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
            await queue.put((index, exc))
            return
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, item)) for i, item in enumerate(prepared)]
    try:
        running = len(tasks)
        while running:
            index, event = await queue.get()
            if event is None:
                running -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.shield(_cancelled_all(tasks, prepared))


async def _cancelled_all(tasks: list[asyncio.Task], prepared: list[PreparedGeneration]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    unstarted = [p.generation for p in prepared if p.generation.finished_at is None]
    if unstarted:
        await sync_to_async(_unstarted_cancel)(unstarted)


def _unstarted_cancel(generations: list[Generation]) -> None:
    for generation in generations:
        with contextlib.suppress(*UNREACHABLE):
            _finish(
                generation,
                Generation.Status.CANCELLED,
                error_code="cancelled",
                error_message="The client disconnected or cancelled the generation.",
            )


def _generation_create(
    *,
    request: GenerationRequest,
    api_key: ApiKey | None,
    transport: str,
    source: str,
    plan: CachePlan | None = None,
) -> PreparedGeneration:
    """generation_acreate for a named model without compression, synchronously."""
    return _prepared(
        model_named(request.model, request.needs),
        messages=request.messages,
        params=request.params,
        api_key=api_key,
        transport=transport,
        source=source,
        prompt=None,
        options=request.options,
        plan=plan,
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
    options: dict[str, Any] | None = None,
    plan: CachePlan | None = None,
) -> PreparedGeneration:
    """Persist the queued Generation of a model choice, with what its stream needs (and,
    in the same database hop, look the response cache up)."""
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
        options=options,
    )
    # A fallback whose context window cannot hold this request is no fallback.
    prompt_tokens = _prompt_estimate(generation)
    choice.fallbacks = [m for m in choice.fallbacks if context_fits(m, prompt_tokens, params)]
    if plan is not None:
        cache_probe(plan, generation)
    return PreparedGeneration(generation, choice)


def _output_tokens(text: str, tool_calls: list[dict[str, Any]] | None) -> int:
    """Tokens of a model's output (text and tool calls), when the upstream did not say."""
    return count_tokens(text + "".join(message_text({"tool_calls": [c]}) for c in tool_calls or []))


def cost_fill(generation: Generation) -> None:
    """Set cost_usd from the row's tokens (unless already set, e.g. a cache hit). A failed
    or cancelled call that the upstream had started answering costs its prompt and the
    output it produced; one that never got an answer costs nothing."""
    if generation.cost_usd is not None:
        return
    if generation.status != Generation.Status.COMPLETED and generation.ttft_ms is not None:
        if generation.prompt_tokens is None:
            generation.prompt_tokens = _prompt_estimate(generation)
        if generation.completion_tokens is None:
            generation.completion_tokens = _output_tokens(
                generation.output_text or "", generation.tool_calls
            )
    generation.cost_usd = generation_cost(
        generation.model,
        generation.prompt_tokens,
        generation.completion_tokens,
        generation.cached_prompt_tokens,
    )


def _finish_fields(generation: Generation, status: str, **fields: Any) -> None:
    """A generation's final state and cost, in memory (`_finish` saves it)."""
    generation.status = status
    generation.finished_at = timezone.now()
    for name, value in fields.items():
        setattr(generation, name, value)
    cost_fill(generation)


def _finish(generation: Generation, status: str, **fields: Any) -> None:
    _finish_fields(generation, status, **fields)
    generation.save()
    hold = getattr(generation, "budget_hold", None)
    if hold is not None:
        generation.budget_hold = None
        budget_settle(hold, generation.cost_usd)
    slot = getattr(generation, "stream_slot", None)
    if slot is not None:
        streams_release(api_key_id=generation.api_key_id, stream_id=slot)
    if generation.api_key_id is not None and limits_for(generation.api_key)[1]:
        reserved = getattr(generation, "reserved_tokens", 0)
        prompt = generation.prompt_tokens
        if prompt is None and reserved:  # failed / cancelled: what the prompt cost
            prompt = _prompt_estimate(generation)
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
        "tool_calls": generation.tool_calls,
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
        **cache_metadata(generation),
    }


def _backoff(attempt: int, retry_after: float | None) -> float:
    return backoff_delay(
        attempt,
        base=settings.TOKENFLOW_RETRY_BACKOFF,
        maximum=settings.TOKENFLOW_RETRY_MAX_DELAY,
        retry_after=retry_after,
    )


async def _stream_model(
    generation: Generation,
    model: ModelRanking,
    extra: dict[str, Any],
    attempts: list[dict[str, Any]],
    parts: list[str],
    state: dict[str, Any],
) -> AsyncIterator[StreamEvent]:
    """Stream one model, retrying retryable errors while nothing has been sent."""
    provider = provider_for(model)
    request = _chat_request(
        model, generation.input_messages, generation.parameters, generation.options, extra
    )
    calls: dict[int, dict[str, Any]] = state.setdefault("tool_calls", {})
    max_attempts = settings.TOKENFLOW_RETRY_ATTEMPTS
    for attempt in range(1, max_attempts + 1):
        try:
            prefetch = _prefetch_take(generation, model) if attempt == 1 else None
            if prefetch is None:
                provider.check_ready()
            stream = prefetch.chunks() if prefetch is not None else provider.stream(request)
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    if chunk.info:
                        yield StreamEvent("info", chunk.info)
                    if chunk.text or chunk.tool_calls or chunk.logprobs:
                        first = not state.get("sent")
                        state["sent"] = True
                        if first:
                            generation.ttft_ms = (time.monotonic() - state["started"]) * 1000
                        if chunk.text or chunk.logprobs:
                            parts.append(chunk.text)
                            data: dict[str, Any] = {"text": chunk.text}
                            if chunk.logprobs:
                                data["logprobs"] = chunk.logprobs
                            yield StreamEvent("text", data)
                        for delta in chunk.tool_calls or []:
                            tool_call_merge(calls, delta)
                            yield StreamEvent("tool_call", delta)
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
                            state["checkpoint_at"] = time.monotonic()
                        else:
                            _checkpoint_maybe(generation, parts, state)
                    if chunk.finish_reason:
                        state["finish_reason"] = chunk.finish_reason
                    if chunk.usage:
                        state["usage"] = chunk.usage
            return
        except ProviderError as exc:
            attempts.append(
                {
                    "model": model.name,
                    "attempt": attempt,
                    "code": exc.code,
                    "error": exc.public_message,
                }
            )
            if state.get("sent") or not exc.retryable or attempt == max_attempts:
                raise
            await asyncio.sleep(_backoff(attempt, exc.retry_after))


def model_options(options: dict[str, Any], model: ModelRanking) -> dict[str, Any]:
    """The Generation's forwarded fields for `model`: its `extra_body` (the client's unknown
    fields) cut down to the model's passthrough_fields allowlist."""
    options = dict(options or {})
    extra_body = options.pop("extra_body", None) or {}
    allowed = {k: v for k, v in extra_body.items() if k in set(model.passthrough_fields or [])}
    if allowed:
        options["extra_body"] = allowed
    return options


def options_ignored(options: dict[str, Any], model: ModelRanking) -> list[str]:
    """The client's unknown fields that `model` does not accept (dropped, never sent)."""
    allowed = set(model.passthrough_fields or [])
    return sorted(k for k in (options or {}).get("extra_body") or {} if k not in allowed)


def _assembled(state: dict[str, Any]) -> list[dict[str, Any]] | None:
    calls = state.get("tool_calls") or {}
    return [calls[index] for index in sorted(calls)] or None


def _mark_streaming(generation: Generation) -> None:
    """queued -> streaming (guarded: never overwrites a terminal status)."""
    Generation.objects.filter(pk=generation.pk, status=Generation.Status.QUEUED).update(
        status=Generation.Status.STREAMING,
        heartbeat_at=timezone.now(),
        ttft_ms=generation.ttft_ms,
        started_at=generation.started_at,
        model=generation.model,
        model_name=generation.model_name,
        provider=generation.provider,
        upstream_model=generation.upstream_model,
    )


def _checkpoint_maybe(generation: Generation, parts: list[str], state: dict[str, Any]) -> None:
    """Every TOKENFLOW_CHECKPOINT_SECONDS, write the partial text and a heartbeat off the
    token path (one write in flight per stream), so a killed process loses at most that
    much and the sweeper can tell a live stream from an abandoned one."""
    pending = state.get("checkpoint")
    if pending is not None and not pending.done():
        return
    # The last checkpoint saw a cancel request from some process (routing.services.cancel).
    if (
        pending is not None
        and not pending.cancelled()
        and not pending.exception()
        and pending.result()
    ):
        raise CancelRequested
    now = time.monotonic()
    if now - state.get("checkpoint_at", now) < settings.TOKENFLOW_CHECKPOINT_SECONDS:
        return
    state["checkpoint_at"] = now
    state["checkpoint"] = asyncio.create_task(
        sync_to_async(_checkpoint)(generation.pk, "".join(parts))
    )


def _checkpoint(pk: int, text: str) -> bool:
    """Best effort: a missed checkpoint costs a few seconds of text if the process dies.
    Returns whether a cancel was requested from any process (routing.services.cancel)."""
    try:
        Generation.objects.filter(pk=pk, status=Generation.Status.STREAMING).update(
            output_text=text, heartbeat_at=timezone.now()
        )
    except UNREACHABLE as exc:
        logger.warning("Checkpoint of generation %s skipped: %s", pk, exc)
    return generation_cancel_requested(pk)


async def _settle(state: dict[str, Any]) -> None:
    """Wait for the pending "streaming" and checkpoint writes so the final save comes
    after them."""
    for name in ("marking", "checkpoint"):
        task = state.pop(name, None)
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
    prefetch = getattr(generation, "prefetch", None)
    started = prefetch.started if prefetch is not None else time.monotonic()
    generation.started_at = prefetch.started_at if prefetch is not None else timezone.now()
    try:
        yield StreamEvent("metadata", {**metadata_for(generation), **(metadata or {})})
    except GeneratorExit:
        await _prefetch_close(generation)
        raise
    state: dict[str, Any] = {"started": started, "finish_reason": "stop", "usage": None}
    parts: list[str] = []
    attempts: list[dict[str, Any]] = []
    candidates = [generation.model, *(fallbacks or [])]
    plan: CachePlan | None = getattr(generation, "cache_plan", None)
    try:
        if plan is not None and plan.entry is not None:
            async for event in _stream_cached(generation, plan, parts, state):
                yield event
        for index, model in enumerate(candidates if not state.get("sent") else []):
            try:
                async for event in _stream_model(
                    generation, model, extra or {}, attempts, parts, state
                ):
                    yield event
                break
            except CancelRequested:
                state["finish_reason"] = "cancelled"
                state["cancel_requested"] = True
                break
            except ProviderError as exc:
                if (
                    state.get("sent")
                    or index == len(candidates) - 1
                    or exc.status in (400, 401, 403, 404)
                ):
                    raise
                _use_model(generation, candidates[index + 1])
                yield StreamEvent(
                    "info",
                    {
                        "fallback": {
                            "from": model.name,
                            "to": generation.model_name,
                            "reason": exc.public_message,
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
            tool_calls=_assembled(state),
            error_code=exc.code,
            error_message=exc.public_message,
            error_detail=exc.detail,
            attempts=attempts,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        yield StreamEvent(
            "error",
            {
                "message": exc.public_message,
                "code": exc.code,
                "status": exc.status,
                "retry_after": exc.retry_after,
                "generation_id": generation.pk,
                "cost_usd": float(generation.cost_usd or 0),
            },
        )
        return
    except (GeneratorExit, asyncio.CancelledError):
        await _prefetch_close(generation)
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
                    tool_calls=_assembled(state),
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
            tool_calls=_assembled(state),
            error_code="internal_error",
            error_message="Internal error during generation.",
            error_detail=redact(f"{type(exc).__name__}: {exc}"),
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
                "cost_usd": float(generation.cost_usd or 0),
            },
        )
        return
    finish_reason, usage = state["finish_reason"], state["usage"]
    text = "".join(parts)
    tool_calls = _assembled(state)
    usage = usage or {}
    prompt_tokens = usage.get("prompt_tokens") or _prompt_estimate(generation)
    completion_tokens = usage.get("completion_tokens")
    if completion_tokens is None:  # the upstream said nothing: count text and tool calls
        completion_tokens = _output_tokens(text, tool_calls)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    cancelled = bool(state.get("cancel_requested"))
    await _settle(state)
    hit = plan is not None and plan.entry is not None
    status = Generation.Status.CANCELLED if cancelled else Generation.Status.COMPLETED
    _finish_fields(
        generation,
        status,
        error_code="cancelled" if cancelled else "",
        error_message="Cancelled by a cancel request." if cancelled else "",
        output_text=text,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_prompt_tokens=cached,
        attempts=attempts,
        duration_ms=(time.monotonic() - started) * 1000,
        **(cache_hit_fields(plan) if hit else {}),
    )
    store = (
        not hit
        and not cancelled
        and plan is not None
        and storable(
            generation, plan, tool_calls=tool_calls, finish_reason=finish_reason, text=text
        )
    )
    # /v1 answers its client before the write (routing.views.openai, EarlyBodyEnd).
    write_after_end = getattr(generation, "end_before_write", False)
    if not write_after_end:
        await db_retry(_finish_completed, generation, status, plan if hit else None)
        if store:
            cache_store_later(generation, plan)  # off the response path
    end = {
        "generation_id": generation.pk,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "cost_usd": float(generation.cost_usd),
    }
    if tool_calls:
        end["tool_calls"] = tool_calls
    try:
        yield StreamEvent("end", end)
    finally:
        if write_after_end:
            try:
                await asyncio.shield(
                    db_retry(_finish_completed, generation, status, plan if hit else None)
                )
            except UNREACHABLE:
                logger.error("Generation %s: database unreachable after its end", generation.pk)
            else:
                if store:
                    cache_store_later(generation, plan)


def _finish_completed(
    generation: Generation, status: str, hit: CachePlan | None, **fields: Any
) -> None:
    """Persist a generation that ran to its end (completed, or stopped by a cancel
    request), then (same thread hop) count its cache hit."""
    _finish(generation, status, **fields)
    if hit is not None:
        cache_hit_count(hit)


async def _stream_cached(
    generation: Generation, plan: CachePlan, parts: list[str], state: dict[str, Any]
) -> AsyncIterator[StreamEvent]:
    """Replay a cached answer at once: one text event, the stored finish reason and
    completion tokens (the prompt is counted as for any request)."""
    entry = plan.entry
    state["sent"] = True
    generation.ttft_ms = (time.monotonic() - state["started"]) * 1000
    parts.append(entry.response_text)
    state["finish_reason"] = entry.finish_reason or "stop"
    state["usage"] = {"completion_tokens": entry.completion_tokens}
    yield StreamEvent("text", {"text": entry.response_text})


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
