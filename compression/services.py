"""Compression services: run the engine off the event loop, persist.

Input arrives validated (compression.serializers: `CompressRequestSerializer` for
/api/compress, `CompressOptionsSerializer` for the `compress` object of generation
requests); other features call `compression_create` / `acompression_create`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import ApiKey
from compression.engines import CompressionRequest, get_compressor
from compression.models import Compression
from routing.models import Prompt
from routing.tokens import count_tokens


@dataclass
class CompressionResult:
    """An engine run before it is persisted."""

    compressed_text: str
    original_tokens: int
    compressed_tokens: int
    requested_ratio: float
    target_tokens: int
    engine: str
    model: str
    skipped: bool
    duration_ms: float


def compression_compute(
    *,
    text: str,
    ratio: float | None = None,
    target_tokens: int | None = None,
    question: str = "",
    force_tokens: list[str] | None = None,
    instruction: str = "",
    engine: str | None = None,
    method: str | None = None,
) -> CompressionResult:
    """Run the engine (no database access: safe in any worker thread)."""
    encoding = settings.TOKENFLOW_COMPRESSOR_TOKEN_ENCODING
    started = time.perf_counter()
    original = count_tokens(text, encoding=encoding)
    target = target_tokens if target_tokens is not None else max(1, round(original * ratio))
    requested = min(1.0, target / original) if ratio is None else ratio
    backend = get_compressor(engine=engine, method=method)
    skipped = original < settings.TOKENFLOW_COMPRESSOR_MIN_TOKENS
    compressed = text
    if not skipped and target < original:
        compressed = backend.compress(
            CompressionRequest(
                text=text,
                target_tokens=target,
                question=question,
                instruction=instruction,
                force_tokens=list(force_tokens or []),
            )
        )
    compressed_tokens = count_tokens(compressed, encoding=encoding)
    if compressed_tokens > original:  # never hand back something longer than the input
        compressed, compressed_tokens = text, original
    return CompressionResult(
        compressed_text=compressed,
        original_tokens=original,
        compressed_tokens=compressed_tokens,
        requested_ratio=requested,
        target_tokens=target,
        engine=backend.name,
        model=backend.model_name,
        skipped=skipped,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def compression_persist(
    *,
    text: str,
    result: CompressionResult,
    question: str = "",
    instruction: str = "",
    force_tokens: list[str] | None = None,
    api_key: ApiKey | None = None,
    prompt: Prompt | None = None,
) -> Compression:
    """Store the Prompt (unless given) and the Compression row."""
    if prompt is None:
        prompt = Prompt.objects.create(text=text, source=Prompt.Source.API, api_key=api_key)
    return Compression.objects.create(
        prompt=prompt,
        api_key=api_key,
        original_text=text,
        compressed_text=result.compressed_text,
        original_tokens=result.original_tokens,
        compressed_tokens=result.compressed_tokens,
        requested_ratio=result.requested_ratio,
        target_tokens=result.target_tokens,
        ratio=result.compressed_tokens / max(result.original_tokens, 1),
        question=question,
        instruction=instruction,
        force_tokens=list(force_tokens or []),
        engine=result.engine,
        model_name=result.model,
        skipped=result.skipped,
        duration_ms=result.duration_ms,
    )


def _options(ratio, target_tokens, question, force_tokens, instruction, engine, method) -> dict:
    """compression_compute's keyword arguments, with empty defaults filled in."""
    return {
        "ratio": ratio,
        "target_tokens": target_tokens,
        "question": question or "",
        "force_tokens": list(force_tokens or []),
        "instruction": instruction or "",
        "engine": engine,
        "method": method,
    }


def compression_create(
    *,
    text: str,
    ratio: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    force_tokens: list[str] | None = None,
    instruction: str | None = None,
    api_key: ApiKey | None = None,
    prompt: Prompt | None = None,
    engine: str | None = None,
    method: str | None = None,
) -> Compression:
    """Compress and persist validated input (sync; blocks for the model run)."""
    options = _options(ratio, target_tokens, question, force_tokens, instruction, engine, method)
    result = compression_compute(text=text, **options)
    return compression_persist(
        text=text,
        result=result,
        question=options["question"],
        instruction=options["instruction"],
        force_tokens=options["force_tokens"],
        api_key=api_key,
        prompt=prompt,
    )


async def acompression_create(
    *,
    text: str,
    ratio: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    force_tokens: list[str] | None = None,
    instruction: str | None = None,
    api_key: ApiKey | None = None,
    prompt: Prompt | None = None,
    engine: str | None = None,
    method: str | None = None,
) -> Compression:
    """Async `compression_create`: the model runs in a worker thread (off the event loop,
    concurrently with other requests); the ORM write goes through the sync thread."""
    options = _options(ratio, target_tokens, question, force_tokens, instruction, engine, method)
    result = await sync_to_async(compression_compute, thread_sensitive=False)(text=text, **options)
    return await sync_to_async(compression_persist)(
        text=text,
        result=result,
        question=options["question"],
        instruction=options["instruction"],
        force_tokens=options["force_tokens"],
        api_key=api_key,
        prompt=prompt,
    )
