"""Compression services: validate options, run the engine off the event loop, persist.

Other features (`/api/generate`, `/api/models/select`, `/v1/chat/completions` with
`compress: {ratio}`) call `compress_options_parse` then `compression_create` /
`acompression_create`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import ApiKey
from compression.engines import METHODS, CompressionRequest, get_compressor
from compression.models import Compression
from routing.models import Prompt
from routing.tokens import count_tokens
from tokenflow_site.errors import ApiError, require_text

MAX_FORCE_TOKENS = 100


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compress_options_parse(value: Any, *, prefix: str = "") -> dict[str, Any]:
    """Validate a compress option dict ({ratio} or {target_tokens}, question, force_tokens,
    instruction, engine, method); 400 naming the field (`prefix` + name) on bad input."""
    if not isinstance(value, dict):
        field = prefix.rstrip(".") or None
        raise ApiError("Compression options must be a JSON object.", field=field)

    def fail(message: str, name: str) -> None:
        raise ApiError(message, field=f"{prefix}{name}")

    ratio, target = value.get("ratio"), value.get("target_tokens")
    if ratio is not None and target is not None:
        fail("Send either 'ratio' or 'target_tokens', not both.", "ratio")
    if ratio is None and target is None:
        raise ApiError(
            "'ratio' or 'target_tokens' is required.", code="required", field=f"{prefix}ratio"
        )
    options: dict[str, Any] = {"ratio": None, "target_tokens": None}
    if ratio is not None:
        if not _number(ratio) or not 0 < ratio <= 1:
            fail("'ratio' must be a number in (0, 1].", "ratio")
        options["ratio"] = float(ratio)
    if target is not None:
        if not isinstance(target, int) or isinstance(target, bool) or target < 1:
            fail("'target_tokens' must be a positive integer.", "target_tokens")
        options["target_tokens"] = target
    for name in ("question", "instruction"):
        text = value.get(name)
        if text is not None and not isinstance(text, str):
            fail(f"'{name}' must be a string.", name)
        options[name] = text or ""
    force = value.get("force_tokens")
    if force is None:
        force = []
    if not isinstance(force, list) or not all(isinstance(t, str) and t.strip() for t in force):
        fail("'force_tokens' must be a list of non-empty strings.", "force_tokens")
    if len(force) > MAX_FORCE_TOKENS:
        fail(f"'force_tokens' allows at most {MAX_FORCE_TOKENS} entries.", "force_tokens")
    options["force_tokens"] = list(dict.fromkeys(force))
    engine = value.get("engine")
    if engine is not None and engine not in settings.TOKENFLOW_COMPRESSOR_ENGINES:
        names = ", ".join(sorted(settings.TOKENFLOW_COMPRESSOR_ENGINES))
        fail(f"Unknown engine {engine!r}; choose one of: {names}.", "engine")
    method = value.get("method")
    if method is not None and method not in METHODS:
        fail(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}.", "method")
    options["engine"], options["method"] = engine, method
    return options


def compress_text_check(text: Any, *, field: str = "text") -> str:
    """A non-empty string within TOKENFLOW_COMPRESSOR_MAX_CHARS (413 beyond it)."""
    return require_text({field: text}, field, max_chars=settings.TOKENFLOW_COMPRESSOR_MAX_CHARS)


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


def _validated(text: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return compress_text_check(text), compress_options_parse(options)


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
    """Validate, compress and persist (sync; blocks for the model run)."""
    text, options = _validated(
        text,
        {
            "ratio": ratio,
            "target_tokens": target_tokens,
            "question": question,
            "force_tokens": force_tokens,
            "instruction": instruction,
            "engine": engine,
            "method": method,
        },
    )
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
    text, options = _validated(
        text,
        {
            "ratio": ratio,
            "target_tokens": target_tokens,
            "question": question,
            "force_tokens": force_tokens,
            "instruction": instruction,
            "engine": engine,
            "method": method,
        },
    )
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
