"""Rolling closed hours into the rollup tables (rollups.models).

`rollup_hours(start, end)` aggregates every closed hour in [start, end) with a handful of
GROUP BY queries over the raw rows (bucket x model x status x histogram bin) and replaces
those hours' rollup rows in one transaction, so running it again changes nothing
(`manage.py rollup_dashboard` backfills with it). An hour is left out, and stays on the raw
path, until it ended GRACE ago and holds no queued or streaming generation: a row that is
still running cannot finish later behind the rollup's back. `rollup_pending` rolls the
not-yet-rolled hours of the last LOOKBACK; the `sweep_generations --every N` loop (started
by `make serve`) calls it on every pass, so the rollup follows within one sweep interval.
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from compression.models import Compression
from rollups.models import ClassificationHour, CompressionHour, GenerationHour, RolledHour
from routing.models import CacheResult, Classification, Generation
from web.selectors import (
    IN_FLIGHT,
    ROLLUP_SECONDS,
    bin_expression,
    bucket_expression,
    bucket_start,
)

HOUR = timedelta(seconds=ROLLUP_SECONDS)
GRACE = timedelta(seconds=60)  # rows are created with the time of their insert
LOOKBACK = timedelta(days=8)  # the week view, and a day of slack
CHUNK = timedelta(days=1)  # hours aggregated per round of queries


def hour_floor(moment: datetime) -> datetime:
    seconds = int(moment.timestamp()) // ROLLUP_SECONDS * ROLLUP_SECONDS
    return datetime.fromtimestamp(seconds, tz=UTC)


def _hour(value: Any) -> datetime:
    return datetime.fromtimestamp(bucket_start(value, ROLLUP_SECONDS), tz=UTC)


def _aggregate(start: datetime, end: datetime) -> dict[str, Any]:
    """Everything created in [start, end), grouped per hour."""
    bucket = bucket_expression("created_at", ROLLUP_SECONDS)
    window = Q(created_at__gte=start, created_at__lt=end)
    generations = Generation.objects.filter(window)
    rows: dict[tuple[datetime, str, str], GenerationHour] = {}
    busy: set[datetime] = set()

    def row(hour: datetime, model: str, status: str) -> GenerationHour:
        key = (hour, model, status)
        if key not in rows:
            rows[key] = GenerationHour(
                hour=hour, model_name=model, status=status, ttft_histogram={},
                duration_histogram={}, categories={},
            )  # fmt: skip
        return rows[key]

    usage = (
        generations.annotate(hour=bucket, bin=bin_expression("ttft_ms"))
        .values("hour", "model_name", "status", "bin")
        .annotate(
            n=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
            saved=Sum("cost_saved_usd"),
            exact=Count("id", filter=Q(cache=CacheResult.EXACT)),
            semantic=Count("id", filter=Q(cache=CacheResult.SEMANTIC)),
            ttft=Sum("ttft_ms"),
        )
        .order_by()
    )
    for item in usage:
        hour = _hour(item["hour"])
        if item["status"] in IN_FLIGHT:
            busy.add(hour)
        target = row(hour, item["model_name"], item["status"])
        target.requests += item["n"]
        target.prompt_tokens += item["prompt"] or 0
        target.completion_tokens += item["completion"] or 0
        target.cost_usd += item["cost"] or 0
        target.cost_saved_usd += item["saved"] or 0
        target.cache_exact += item["exact"]
        target.cache_semantic += item["semantic"]
        if item["bin"] >= 0:
            target.ttft_count += item["n"]
            target.ttft_sum_ms += item["ttft"] or 0
            target.ttft_histogram[str(item["bin"])] = item["n"]
    durations = (
        generations.annotate(hour=bucket, bin=bin_expression("duration_ms"))
        .values("hour", "model_name", "status", "bin")
        .annotate(n=Count("id"), total=Sum("duration_ms"))
        .order_by()
    )
    for item in durations:
        if item["bin"] < 0:
            continue
        target = row(_hour(item["hour"]), item["model_name"], item["status"])
        target.duration_count += item["n"]
        target.duration_sum_ms += item["total"] or 0
        target.duration_histogram[str(item["bin"])] = item["n"]
    routed = (
        generations.filter(classification__isnull=False)
        .annotate(hour=bucket, category=F("classification__top_category"))
        .values("hour", "model_name", "status", "category")
        .annotate(n=Count("id"))
        .order_by()
    )
    for item in routed:
        target = row(_hour(item["hour"]), item["model_name"], item["status"])
        target.categories[item["category"]] = item["n"]
    classified = (
        Classification.objects.filter(window)
        .annotate(hour=bucket)
        .values("hour", "top_category")
        .annotate(n=Count("id"))
        .order_by()
    )
    compressed = (
        Compression.objects.filter(window)
        .annotate(hour=bucket)
        .values("hour")
        .annotate(n=Count("id"), original=Sum("original_tokens"), kept=Sum("compressed_tokens"))
        .order_by()
    )
    return {
        "generations": list(rows.values()),
        "busy": busy,
        "classifications": [
            ClassificationHour(hour=_hour(i["hour"]), top_category=i["top_category"], count=i["n"])
            for i in classified
        ],
        "compressions": [
            CompressionHour(
                hour=_hour(i["hour"]),
                count=i["n"],
                original_tokens=i["original"] or 0,
                compressed_tokens=i["kept"] or 0,
            )
            for i in compressed
        ],
    }


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours, hour = [], hour_floor(start)
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


def rollup_hours(start: datetime, end: datetime, *, now: datetime | None = None) -> list[datetime]:
    """Roll the closed, settled hours that start in [start, end); returns those rolled."""
    now = now or timezone.now()
    end = min(end, hour_floor(now - GRACE))  # only hours that ended GRACE ago
    rolled: list[datetime] = []
    chunk_start = hour_floor(start)
    while chunk_start < end:
        chunk_end = min(chunk_start + CHUNK, end)
        rolled += _rollup_chunk(_hours(chunk_start, chunk_end), now)
        chunk_start = chunk_end
    return rolled


def _rollup_chunk(hours: list[datetime], now: datetime) -> list[datetime]:
    if not hours:
        return []
    start, end = hours[0], hours[-1] + HOUR
    data = _aggregate(start, end)
    settled = [hour for hour in hours if hour not in data["busy"]]
    keep = set(settled)

    def mine(items: Iterable) -> list:
        return [item for item in items if item.hour in keep]

    generations = mine(data["generations"])
    counts: dict[datetime, int] = {}
    for item in generations:
        counts[item.hour] = counts.get(item.hour, 0) + item.requests
    with transaction.atomic():
        for model in (GenerationHour, ClassificationHour, CompressionHour, RolledHour):
            model.objects.filter(hour__in=settled).delete()
        GenerationHour.objects.bulk_create(generations)
        ClassificationHour.objects.bulk_create(mine(data["classifications"]))
        CompressionHour.objects.bulk_create(mine(data["compressions"]))
        RolledHour.objects.bulk_create(
            RolledHour(hour=hour, rolled_at=now, generations=counts.get(hour, 0))
            for hour in settled
        )
    return settled


def rollup_pending(*, now: datetime | None = None, lookback: timedelta = LOOKBACK) -> int:
    """Roll the hours of the last `lookback` that are closed but not rolled yet."""
    now = now or timezone.now()
    start, end = hour_floor(now - lookback), hour_floor(now - GRACE)
    done = set(
        RolledHour.objects.filter(hour__gte=start, hour__lt=end).values_list("hour", flat=True)
    )
    missing = [hour for hour in _hours(start, end) if hour not in done]
    rolled = 0
    while missing:  # contiguous runs, one round of queries each
        run = [missing.pop(0)]
        while missing and missing[0] == run[-1] + HOUR and len(run) < 24:
            run.append(missing.pop(0))
        rolled += len(rollup_hours(run[0], run[-1] + HOUR, now=now))
    return rolled
