"""Classification: score a validated prompt, persist a Classification.

`classification_create` is sync (DRF view, batch items); `classification_acreate` runs
the same steps from async code with the model's forward pass in a worker thread, so
the event loop keeps streaming other requests while a prompt is classified.
"""

import asyncio
import time

from asgiref.sync import sync_to_async

from accounts.models import ApiKey
from routing.classifiers import Category, ClassifierResult, get_classifier
from routing.models import Classification, Prompt
from routing.services.routes import routing_categories
from tokenflow_site.errors import ApiError


def categories_resolve(categories: list[Category] | None) -> list[Category]:
    """The caller's categories, or the routing table's enabled ones with descriptions."""
    if categories:
        return categories
    categories = routing_categories()
    if not categories:
        raise ApiError(
            "The routing table has no enabled category: pass 'possible_categories' or add "
            "routes in the admin.",
            code="no_categories",
            status=503,
        )
    return categories


def _save(
    *,
    prompt: str,
    categories: list[Category],
    multi_label: bool,
    result: ClassifierResult,
    engine: str,
    duration_ms: float,
    api_key: ApiKey | None,
    source: str,
    messages: list[dict[str, str]] | None,
) -> Classification:
    prompt_row = Prompt.objects.create(
        text=prompt,
        messages=messages or [{"role": "user", "content": prompt}],
        source=source,
        api_key=api_key,
    )
    ranked = result.ranked()
    top, confidence = ranked[0]
    return Classification.objects.create(
        prompt=prompt_row,
        api_key=api_key,
        engine=engine,
        categories=[{"category": c.label, "description": c.description} for c in categories],
        multi_label=multi_label,
        top_category=top,
        confidence=min(max(confidence, 0.0), 1.0),
        scores=[{"category": label, "score": round(score, 6)} for label, score in ranked],
        duration_ms=round(duration_ms, 3),
    )


def _classify(prompt: str, categories: list[Category], multi_label: bool):
    classifier = get_classifier()
    started = time.perf_counter()
    result = classifier.classify(prompt, categories, multi_label=multi_label)
    return result, classifier.engine_name, (time.perf_counter() - started) * 1000


def classification_create(
    *,
    prompt: str,
    categories: list[Category] | None = None,
    multi_label: bool = False,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
    messages: list[dict[str, str]] | None = None,
) -> Classification:
    """Classify and persist (sync); the categories default to the routing table's."""
    categories = categories_resolve(categories)
    result, engine, duration_ms = _classify(prompt, categories, multi_label)
    return _save(
        prompt=prompt,
        categories=categories,
        multi_label=multi_label,
        result=result,
        engine=engine,
        duration_ms=duration_ms,
        api_key=api_key,
        source=source,
        messages=messages,
    )


async def classification_acreate(
    *,
    prompt: str,
    categories: list[Category] | None = None,
    multi_label: bool = False,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
    messages: list[dict[str, str]] | None = None,
) -> Classification:
    """`classification_create` for async callers: the ORM in Django's sync thread, the
    forward pass in a worker thread."""
    categories = await sync_to_async(categories_resolve)(categories)
    result, engine, duration_ms = await asyncio.to_thread(
        _classify, prompt, categories, multi_label
    )
    return await sync_to_async(_save)(
        prompt=prompt,
        categories=categories,
        multi_label=multi_label,
        result=result,
        engine=engine,
        duration_ms=duration_ms,
        api_key=api_key,
        source=source,
        messages=messages,
    )
