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
from routing.services.routes import routing_table
from tokenflow_site.errors import ApiError


def categories_resolve(categories: list[Category] | None) -> list[Category]:
    """The caller's categories (bare labels the routing table knows take its description
    and examples), or the routing table's enabled ones with descriptions and examples."""
    return _resolve(categories)[0]


def _resolve(categories: list[Category] | None):
    """(categories, (trained head or None, its engine, adaptation or None)): the head only
    for the routing table's own categories; the traffic adaptation (routing.services
    .adaptation) for any label set it covers."""
    table = routing_table()
    if categories:
        expanded = table.expand(categories)
        adaptation = table.adaptation_for([c.label for c in expanded])
        return expanded, (None, "", adaptation)
    if not table.categories:
        raise ApiError(
            "The routing table has no enabled category: pass 'possible_categories' or add "
            "routes in the admin.",
            code="no_categories",
            status=503,
        )
    adaptation = table.adaptation_for([c.label for c in table.categories])
    return list(table.categories), (table.head, table.head_engine, adaptation)


def _category_record(category: Category) -> dict:
    record = {"category": category.label, "description": category.description}
    if category.examples:
        record["examples"] = len(category.examples)  # how many, not the texts
    return record


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
        categories=[_category_record(c) for c in categories],
        multi_label=multi_label,
        top_category=top,
        confidence=min(max(confidence, 0.0), 1.0),
        scores=[{"category": label, "score": round(score, 6)} for label, score in ranked],
        duration_ms=round(duration_ms, 3),
    )


def engine_of(classifier) -> str:
    """The engine an adaptation must match (only backends that take a head can use one)."""
    return classifier.engine_name if classifier.supports_head else ""


def _classify(prompt: str, categories: list[Category], multi_label: bool, head=None):
    classifier = get_classifier()
    engine = classifier.engine_name
    options = {}
    usable = head and head[0] is not None and classifier.supports_head and head[1] == engine
    if usable and not multi_label:
        options["head"] = head[0]
        engine = f"{engine}+router:v{head[0].version}"
    adaptation = head[2] if head and len(head) > 2 else None
    labels = {c.label for c in categories}
    if "head" in options and labels <= set(options["head"].labels):
        adaptation = None  # the router scores every category: zero-shot gets no mass
    if adaptation is not None and not multi_label and adaptation.engine == engine_of(classifier):
        options["adaptation"] = adaptation
        engine = f"{engine}+adapted:v{adaptation.version}"
    started = time.perf_counter()
    result = classifier.classify(prompt, categories, multi_label=multi_label, **options)
    return result, engine, (time.perf_counter() - started) * 1000


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
    categories, head = _resolve(categories)
    result, engine, duration_ms = _classify(prompt, categories, multi_label, head)
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
    categories, head = await sync_to_async(_resolve)(categories)
    result, engine, duration_ms = await asyncio.to_thread(
        _classify, prompt, categories, multi_label, head
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
