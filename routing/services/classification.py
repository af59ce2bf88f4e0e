"""Classification: validate the input, score the prompt, persist a Classification.

`classification_create` is sync (DRF view, batch items); `classification_acreate` runs
the same steps from async code with the model's forward pass in a worker thread, so
the event loop keeps streaming other requests while a prompt is classified.
"""

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import ApiKey
from routing.classifiers import Category, ClassifierResult, get_classifier
from routing.models import Classification, Prompt
from routing.services.routes import routing_categories
from tokenflow_site.errors import ApiError, raise_too_large

FIELD = "possible_categories"
MAX_LABEL_CHARS = 100
MAX_DESCRIPTION_CHARS = 1000


def prompt_validate(prompt: Any) -> str:
    if prompt is None:
        raise ApiError("'prompt' is required.", code="required", field="prompt")
    if not isinstance(prompt, str):
        raise ApiError("'prompt' must be a string.", code="invalid_type", field="prompt")
    if not prompt.strip():
        raise ApiError("'prompt' must not be empty.", code="empty", field="prompt")
    if len(prompt) > settings.TOKENFLOW_MAX_INPUT_CHARS:
        raise_too_large("prompt", len(prompt), settings.TOKENFLOW_MAX_INPUT_CHARS)
    return prompt


def multi_label_validate(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(
            "'multi_label' must be true or false.", code="invalid_type", field="multi_label"
        )
    return value


def _category_parse(index: int, item: Any) -> Category:
    if isinstance(item, dict):
        label, description = item.get("name", item.get("category")), item.get("description", "")
    else:
        label, description = item, ""
    if not isinstance(label, str) or not isinstance(description, str):
        raise ApiError(
            f"{FIELD}[{index}] must be a string or an object {{name, description?}} of strings.",
            code="invalid_type",
            field=FIELD,
        )
    label = label.strip()
    if not label:
        raise ApiError(f"{FIELD}[{index}] is an empty name.", code="empty", field=FIELD)
    if len(label) > MAX_LABEL_CHARS or len(description) > MAX_DESCRIPTION_CHARS:
        raise ApiError(
            f"{FIELD}[{index}]: names are limited to {MAX_LABEL_CHARS} characters and "
            f"descriptions to {MAX_DESCRIPTION_CHARS}.",
            code="too_long",
            field=FIELD,
        )
    return Category(label, description.strip())


def categories_parse(value: Any) -> list[Category] | None:
    """The caller's categories (strings or {name, description} objects), or None."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(f"'{FIELD}' must be a list.", code="invalid_type", field=FIELD)
    limit = settings.TOKENFLOW_MAX_CATEGORIES
    if len(value) > limit:
        raise ApiError(
            f"'{FIELD}' has {len(value)} categories; the limit is {limit}.",
            code="too_many_categories",
            field=FIELD,
        )
    if len(value) < 2:
        raise ApiError(
            f"'{FIELD}' needs at least 2 categories.", code="too_few_categories", field=FIELD
        )
    categories = [_category_parse(index, item) for index, item in enumerate(value)]
    seen: set[str] = set()
    for category in categories:
        key = category.label.casefold()
        if key in seen:
            raise ApiError(
                f"'{FIELD}' lists {category.label!r} more than once.",
                code="duplicate_category",
                field=FIELD,
            )
        seen.add(key)
    return categories


def categories_resolve(possible_categories: Any) -> list[Category]:
    """The caller's categories, or the routing table's enabled ones with descriptions."""
    categories = categories_parse(possible_categories)
    if categories is not None:
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
    prompt: Any,
    possible_categories: Any = None,
    multi_label: Any = False,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
    messages: list[dict[str, str]] | None = None,
) -> Classification:
    """Validate, classify and persist (sync)."""
    prompt = prompt_validate(prompt)
    multi_label = multi_label_validate(multi_label)
    categories = categories_resolve(possible_categories)
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
    prompt: Any,
    possible_categories: Any = None,
    multi_label: Any = False,
    api_key: ApiKey | None = None,
    source: str = Prompt.Source.API,
    messages: list[dict[str, str]] | None = None,
) -> Classification:
    """`classification_create` for async callers: the ORM in Django's sync thread, the
    forward pass in a worker thread."""
    prompt = prompt_validate(prompt)
    multi_label = multi_label_validate(multi_label)
    categories = await sync_to_async(categories_resolve)(possible_categories)
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
