"""The response cache: which requests it serves, how they are keyed, lookup and storage.

routing.services.generation calls it at one place for every transport:
`cache_plan` (from the validated request, no I/O) -> `cache_probe` (in the same database
hop as the Generation insert: the exact lookup, the semantic index refresh and the lexical
guard against the scope's entries; with a fast embedder (static: ~25 us; MiniLM on ONNX
Runtime: ~3 ms) the whole semantic lookup when a hit is plausible) -> `cache_resolve`
(MiniLM on torch only: after an exact miss, if some entry of the scope passes the guard
and the static prefilter, the MiniLM embedding of the last user message, in a worker
thread, and the semantic search)
-> on a completed miss, `cache_store_later`: a task of its own, after the end event,
embeds (unless the lookup already did: never twice) and stores.

So an exact hit never embeds, a miss waits for a MiniLM pass only when a semantic hit is
plausible, and storing never delays a response. Which embedder: response_cache.embedders.
"""

import asyncio
import contextvars
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from response_cache.embedders import (
    DEFAULT_THRESHOLDS,
    default_threshold,
    get_embedder,
    prefilter_embedder,
)
from response_cache.guard import Features, features
from response_cache.index import semantic_index
from response_cache.models import CacheEntry
from routing.models import CacheResult, Generation, ModelRanking

logger = logging.getLogger(__name__)

HEADER = "x-tokenflow-cache"
STORED_FINISH_REASONS = ("stop", "length")
# Options that do not change the answer (an end-user id for the upstream's abuse checks).
NEUTRAL_OPTIONS = ("user",)
# Options whose answer a replay cannot give back.
UNCACHEABLE_OPTIONS = ("logprobs", "top_logprobs")


def _digest(material: Any) -> str:
    raw = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class CachePlan:
    """A request the cache may answer, then what the lookup found."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    options: dict[str, Any]
    compress: dict[str, Any] | None
    query_text: str | None  # the last user message, compared semantically
    vector_task: asyncio.Future | None = None
    embedder: Any = None  # response_cache.embedders: whose vectors the lookup compares
    embedded: bool = False  # `query_vector` is the query's vector (maybe None)
    query_vector: np.ndarray | None = None
    exact_key: str = ""
    scope_key: str = ""
    threshold: float = 0.0
    shared: bool = False
    api_key_id: int | None = None
    model: ModelRanking | None = None
    guard: Features | None = None
    maybe_semantic: bool = False  # an entry of the scope passes the guard
    entry: CacheEntry | None = None  # the hit
    result: str = CacheResult.MISS
    similarity: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def material(self, model: ModelRanking, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": model.name,
            "upstream": model.upstream_model,
            "messages": messages,
            "params": self.params,
            "options": self.options,
            "compress": self.compress,
        }

    @property
    def index_key(self) -> tuple[str, str]:
        return (self.embedder.id, self.scope_key)

    async def vector(self) -> np.ndarray | None:
        if self.embedded:
            return self.query_vector
        if self.vector_task is None:
            return None
        try:
            return await self.vector_task
        except Exception:  # noqa: BLE001 - no semantic cache beats a failed request
            logger.warning("Cache embedding failed", exc_info=True)
            return None


def cache_plan(
    *,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    options: dict[str, Any],
    compress: dict[str, Any] | None,
    cache: bool | None,
    choices: int = 1,
) -> CachePlan | None:
    """The plan for a request the cache may serve, or None: the cache is off, the client
    said `cache: false` (or Cache-Control: no-cache), or the request is not deterministic
    (by default only temperature 0 is cached; `cache: true` opts any request in), or its
    answer cannot be replayed (several choices, logprobs)."""
    if not settings.TOKENFLOW_CACHE or cache is False:
        return None
    if cache is None and params.get("temperature") != 0:
        return None
    if choices > 1 or any(options.get(name) for name in UNCACHEABLE_OPTIONS):
        return None
    last = messages[-1] if messages else {}
    query = last.get("content") if last.get("role") == "user" else None
    return CachePlan(
        messages=messages,
        params=params,
        options={k: v for k, v in options.items() if k not in NEUTRAL_OPTIONS},
        compress=compress,
        query_text=query if isinstance(query, str) and settings.TOKENFLOW_CACHE_SEMANTIC else None,
    )


def query_vector(text: str, embedder=None) -> np.ndarray | None:
    """The vector of `text` by `embedder` (the configured one), or None (see its `embed`)."""
    return (embedder or get_embedder()).embed(text)


def cache_start(plan: CachePlan, *, inline: bool = False) -> None:
    """Start embedding the query: `inline` (cache_probe, in the request's sync thread, with
    a fast embedder: static, or MiniLM on ONNX Runtime), else in a worker thread, never on
    the event loop (awaited for a semantic lookup, or when the answer is stored)."""
    if plan.query_text is None or plan.embedder is None or plan.embedded:
        return
    if inline:
        plan.query_vector, plan.embedded = query_vector(plan.query_text, plan.embedder), True
    elif plan.vector_task is None:
        plan.vector_task = asyncio.ensure_future(
            sync_to_async(query_vector, thread_sensitive=False)(plan.query_text, plan.embedder)
        )


_embedder_failed = False


def _embedder():
    """The configured embedder, or None (logged once) when it cannot load: the cache then
    serves exact hits only, rather than failing requests."""
    global _embedder_failed
    try:
        return get_embedder()
    except Exception:  # noqa: BLE001
        if not _embedder_failed:
            _embedder_failed = True
            logger.exception("Response cache: embedder unavailable; semantic cache off")
        return None


def cache_probe(plan: CachePlan, generation: Generation) -> None:
    """Synchronously, right after the Generation insert: key the request on its model,
    look the exact key up and bring the scope's semantic index up to date."""
    model = generation.model
    plan.model = model
    plan.api_key_id = generation.api_key_id
    plan.shared = model.cache_shared_across_keys
    plan.threshold = (
        model.cache_similarity_threshold
        if model.cache_similarity_threshold is not None
        else default_threshold()
    )
    plan.exact_key = _digest(plan.material(model, plan.messages))
    plan.scope_key = _digest(plan.material(model, plan.messages[:-1]))
    generation.cache = CacheResult.MISS
    generation.cache_plan = plan
    entry = _exact_lookup(plan)
    if entry is not None:
        _hit(plan, generation, entry, CacheResult.EXACT, None)
    elif plan.query_text is not None and (embedder := _embedder()) is not None:
        plan.embedder = embedder
        prefilter = prefilter_embedder() if embedder.name.startswith("minilm") else None
        semantic_index.refresh(plan.index_key, embedder.dimensions, prefilter)
        plan.guard = features(plan.query_text) if settings.TOKENFLOW_CACHE_GUARD else None
        rough = prefilter.embed(plan.query_text) if prefilter is not None else None
        plan.maybe_semantic = semantic_index.may_match(
            plan.index_key,
            api_key_id=plan.api_key_id,
            shared=plan.shared,
            guard=plan.guard,
            rough=rough,
            rough_threshold=settings.TOKENFLOW_CACHE_PREFILTER,
        )
        if plan.maybe_semantic and rough is not None and plan.guard is not None:
            # An entry the static model alone calls a hit at its own (stricter) threshold
            # and that passes the guard (a near-verbatim repeat) is served now, without
            # MiniLM. Without the guard, static cosine is far from precise.
            threshold = max(plan.threshold, DEFAULT_THRESHOLDS["static"])
            _semantic_fetch(plan, generation, _search(plan, rough, threshold, rough=True))
        if plan.maybe_semantic and plan.entry is None and embedder.fast:
            # A fast embedder (static, or MiniLM on ONNX Runtime) runs here, in this
            # database hop (the request's own sync thread): no worker thread, no second hop.
            cache_start(plan, inline=True)
            if plan.query_vector is not None:
                _semantic_fetch(plan, generation, _search(plan, plan.query_vector))


ENTRY_SQL = (
    "SELECT id, exact_key, response_text, finish_reason, prompt_tokens, completion_tokens, "
    "generation_id, api_key_id FROM {table} WHERE {column} = %s "
    "AND expires_at > %s{scope} ORDER BY id DESC LIMIT 1"
)
ENTRY_COLUMNS = [
    "id",
    "exact_key",
    "response_text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "generation_id",
    "api_key_id",
]


def _exact_lookup(plan: CachePlan) -> CacheEntry | None:
    return _entry_lookup(plan, "exact_key", plan.exact_key)


def _entry_lookup(plan: CachePlan, column: str, value: Any) -> CacheEntry | None:
    """The newest live entry whose `column` is `value` (the key's own, unless shared).
    One hand-written query: the ORM's compilation of the same SELECT costs more than
    running it, and this runs on every cacheable request. The entry's model is the plan's
    (the exact key and the scope key both name it)."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params: list[Any] = [value, now]
    scope = ""
    if not plan.shared:
        if plan.api_key_id is None:
            scope = " AND api_key_id IS NULL"
        else:
            scope, params = " AND api_key_id = %s", [*params, plan.api_key_id]
    sql = ENTRY_SQL.format(table=CacheEntry._meta.db_table, column=column, scope=scope)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    entry = CacheEntry(**dict(zip(ENTRY_COLUMNS, row, strict=True)))
    entry.model = plan.model
    entry._state.adding, entry._state.db = False, connection.alias
    return entry


def _hit(
    plan: CachePlan, generation: Generation, entry: CacheEntry, result: str, similarity
) -> None:
    plan.entry, plan.result, plan.similarity = entry, result, similarity
    generation.cache = result


async def cache_resolve(plan: CachePlan, generation: Generation) -> None:
    """After an exact miss: the best semantic candidate of the same scope (and key, unless
    the model shares its cache) at or above the threshold that passes the guard."""
    if plan.entry is not None or plan.query_text is None or not plan.maybe_semantic:
        return  # without a candidate, the vector is made once the first token is out
    if plan.embedded:
        return  # a fast embedder: cache_probe already looked
    cache_start(plan)
    vector = await plan.vector()
    if vector is None:
        return
    candidates = _search(plan, vector)
    if candidates:
        await sync_to_async(_semantic_fetch)(plan, generation, candidates)


def _search(plan: CachePlan, vector: np.ndarray, threshold: float | None = None, rough=False):
    return semantic_index.search(
        plan.index_key,
        vector,
        threshold=plan.threshold if threshold is None else threshold,
        api_key_id=plan.api_key_id,
        shared=plan.shared,
        guard=plan.guard,
        rough=rough,
    )


def _semantic_fetch(plan: CachePlan, generation: Generation, candidates) -> None:
    for candidate in candidates:
        entry = _entry_lookup(plan, "id", candidate.entry_id)
        if entry is None:  # purged or expired since the index saw it
            semantic_index.drop(plan.index_key, candidate.entry_id)
            continue
        _hit(plan, generation, entry, CacheResult.SEMANTIC, candidate.similarity)
        return


def cache_metadata(generation: Generation) -> dict[str, Any]:
    """What the first event says about the cache (nothing when it was not consulted)."""
    plan: CachePlan | None = getattr(generation, "cache_plan", None)
    if plan is None:
        return {}
    data: dict[str, Any] = {"cache": plan.result}
    if plan.entry is not None:
        data["cache_entry_id"] = plan.entry.pk
        data["cached_generation_id"] = plan.entry.generation_id
        if plan.similarity is not None:
            data["cache_similarity"] = round(plan.similarity, 4)
    return data


def cache_headers(generation: Generation) -> dict[str, str]:
    plan: CachePlan | None = getattr(generation, "cache_plan", None)
    return {HEADER: plan.result} if plan is not None else {}


def cache_hit_fields(plan: CachePlan) -> dict[str, Any]:
    """A hit's Generation fields: it cost nothing and saved what its answer cost."""
    from routing.services.spend import generation_cost

    entry = plan.entry
    return {
        "cost_usd": Decimal(0),
        "cost_saved_usd": generation_cost(
            entry.model, entry.prompt_tokens, entry.completion_tokens
        ),
    }


def storable(generation: Generation, plan: CachePlan, *, tool_calls, finish_reason, text) -> bool:
    """Only a completed text answer of the model asked for (not a fallback's) is stored."""
    return (
        plan.entry is None
        and not tool_calls
        and finish_reason in STORED_FINISH_REASONS
        and bool(text)
        and generation.model_id == plan.model.pk
    )


def cache_hit_count(plan: CachePlan) -> None:
    """Count a hit on its entry (best effort: the answer was already delivered)."""
    try:
        CacheEntry.objects.filter(pk=plan.entry.pk).update(
            hits=F("hits") + 1, last_hit_at=timezone.now()
        )
    except Exception:  # noqa: BLE001
        logger.warning("Response cache: hit on entry %s not counted", plan.entry.pk)


# Stores in flight: the answer is delivered before its entry is written (the embedding of a
# miss that needed no semantic lookup is made only now, off the response path).
_pending: set[asyncio.Task] = set()


def cache_store_later(generation: Generation, plan: CachePlan) -> None:
    """Store a completed miss in a task of its own: the stream's end does not wait for the
    embedding and the insert. An entry lost to a process exit is only a future miss."""
    # A context of its own: the request's (Django's per-request sync thread) ends with it.
    task = asyncio.get_running_loop().create_task(
        _store(generation, plan), context=contextvars.Context()
    )
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _store(generation: Generation, plan: CachePlan) -> None:
    try:
        cache_start(plan)
        vector = await plan.vector()
        await sync_to_async(cache_store)(generation, plan, vector)
    except Exception:  # noqa: BLE001
        logger.exception("Response cache: generation %s not stored", generation.pk)


async def cache_flush() -> None:
    """Wait for the stores in flight (tests, graceful shutdown)."""
    while _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)


def cache_store(generation: Generation, plan: CachePlan, vector: np.ndarray | None) -> CacheEntry:
    now = timezone.now()
    CacheEntry.objects.filter(scope_key=plan.scope_key, expires_at__lte=now).delete()
    return CacheEntry.objects.create(
        exact_key=plan.exact_key,
        scope_key=plan.scope_key,
        api_key_id=generation.api_key_id,
        model=plan.model,
        model_name=plan.model.name,
        query_text=plan.query_text or "",
        embedding=vector.astype(np.float32).tobytes() if vector is not None else None,
        embedder=plan.embedder.id if vector is not None else "",
        response_text=generation.output_text,
        finish_reason=generation.finish_reason,
        prompt_tokens=generation.prompt_tokens or 0,
        completion_tokens=generation.completion_tokens or 0,
        generation=generation,
        expires_at=now + timedelta(seconds=settings.TOKENFLOW_CACHE_TTL),
    )


def cache_purge(*, expired_only: bool = False, model: ModelRanking | None = None) -> int:
    """Delete entries (all, a model's, or only the expired ones); the number deleted.
    Every process's index forgets them on its next lookup of their scope."""
    queryset = CacheEntry.objects.expired() if expired_only else CacheEntry.objects.all()
    if model is not None:
        queryset = queryset.filter(model=model)
    return queryset.delete()[0]
