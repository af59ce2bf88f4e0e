"""Reads behind the pages: the playground's options, the dashboard's aggregates and the live
snapshot (generations in flight, active batch jobs).

Every aggregate is computed by the database in one pass over the range (GROUP BY time
bucket x model): requests, tokens and errors per model, TTFT and duration percentiles
from a log-scale histogram (bins computed in SQL, percentiles read off the cumulative
counts here), the routing mix, compression savings. bench/dashboard.py times them on
1,000,000 generations; the covering index of routing/migrations/0003_dashboard_indexes.py
makes the scans index-only.
"""

import bisect
import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, F, Func, IntegerField, Sum
from django.db.models.functions import Coalesce, Substr
from django.utils import timezone

from batches.models import BatchJob
from batches.selectors import batch_progress
from compression.models import Compression
from pipelines.models import Pipeline
from routing.models import Classification, Generation, ModelRanking
from routing.services.models import AUTO_MODEL
from routing.services.routes import routing_categories

# range -> (length, bucket seconds)
SPANS: dict[str, tuple[timedelta, int]] = {
    "hour": (timedelta(hours=1), 60),
    "day": (timedelta(days=1), 600),
    "week": (timedelta(days=7), 3600),
}
# Histogram bin edges (ms), log-spaced by 15 %: a percentile is within 7.5 % of the truth.
BIN_RATIO = 1.15
BIN_EDGES = [round(BIN_RATIO**i, 3) for i in range(int(math.log(3_600_000) / math.log(BIN_RATIO)))]
PERCENTILES = (0.5, 0.95)
IN_FLIGHT = (Generation.Status.QUEUED, Generation.Status.STREAMING)
LIVE_LIMIT = 50


# --- playground ----------------------------------------------------------------------------


def playground_options() -> dict[str, Any]:
    """What the playground offers: enabled models (and auto), pipelines, routing categories."""
    models = list(
        ModelRanking.objects.enabled().order_by("rank", "name").values("name", "provider")
    )
    pipelines = list(
        Pipeline.objects.filter(enabled=True).order_by("name").values("name", "description")
    )
    categories = [{"name": c.label, "description": c.description} for c in routing_categories()]
    return {
        "models": [{"name": AUTO_MODEL, "provider": "router"}, *models],
        "pipelines": pipelines,
        "categories": categories,
    }


# --- SQL building blocks -----------------------------------------------------------------


class _DateBin(Func):
    """PostgreSQL date_bin(interval, ts, origin): fixed-width time buckets."""

    output_field = DateTimeField()

    def __init__(self, expression, seconds: int):
        super().__init__(expression)
        self.template = (
            f"date_bin('{int(seconds)} seconds', %(expressions)s, TIMESTAMPTZ '2000-01-01')"
        )


def _bucket_expression(field: str, seconds: int):
    """The time bucket of a row, computed by the database. SQLite stores datetimes as
    'YYYY-MM-DD HH:MM:SS.ffffff' text, so a prefix is a bucket (16 chars = minute,
    15 = ten minutes, 13 = hour) without a per-row Python function; PostgreSQL bins."""
    if connection.vendor == "sqlite":
        return Substr(field, 1, {60: 16, 600: 15, 3600: 13}[seconds])
    return _DateBin(F(field), seconds)


@functools.lru_cache(maxsize=4096)
def _bucket_start(value: Any, seconds: int) -> int:
    """A bucket value from the database -> its start as a Unix timestamp (cached: the
    grouped rows repeat each bucket once per model, status and bin)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        text = str(value)
        text += {16: ":00", 15: "0:00", 13: ":00:00"}.get(len(text), "")
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) // seconds * seconds


def _case_tree(edges: list[float], offset: int) -> str:
    """A balanced CASE over `edges` (log2(len) comparisons per row): bin i holds values in
    [edges[i-1], edges[i]). `%(expressions)s` stands for the column."""
    if len(edges) == 1:
        return f"CASE WHEN %(expressions)s < {edges[0]!r} THEN {offset} ELSE {offset + 1} END"
    middle = len(edges) // 2
    return (
        f"CASE WHEN %(expressions)s < {edges[middle]!r} "
        f"THEN {_case_tree(edges[:middle], offset)} "
        f"ELSE {_case_tree(edges[middle:], offset + middle)} END"
    )


class HistogramBin(Func):
    """The histogram bin of a column, in plain SQL on every backend. The CASE tree is
    rendered once as a template (an ORM tree of ~200 When nodes costs more to compile than
    the query costs to run)."""

    template = f"CASE WHEN %(expressions)s IS NULL THEN -1 ELSE {_case_tree(BIN_EDGES, 0)} END"
    output_field = IntegerField()

    def as_sql(self, compiler, connection, **extra_context):
        sql, params = super().as_sql(compiler, connection, **extra_context)
        # The column appears once per comparison: so do its parameters, if any.
        return sql, tuple(params) * self.template.count("%(expressions)s")


def _bin_expression(field: str) -> HistogramBin:
    return HistogramBin(F(field))


def _bin_value(index: int) -> float:
    """A representative value of a bin (geometric middle)."""
    if index <= 0:
        return BIN_EDGES[0] / 2
    if index >= len(BIN_EDGES):
        return BIN_EDGES[-1]
    return math.sqrt(BIN_EDGES[index - 1] * BIN_EDGES[index])


def histogram_percentiles(histogram: dict[int, int]) -> dict[str, float | None]:
    """{"p50": ms, "p95": ms} from {bin: count}."""
    total = sum(histogram.values())
    result: dict[str, float | None] = {}
    for fraction in PERCENTILES:
        key = f"p{round(fraction * 100)}"
        if not total:
            result[key] = None
            continue
        rank, seen = fraction * total, 0
        for index in sorted(histogram):
            seen += histogram[index]
            if seen >= rank:
                result[key] = round(_bin_value(index), 1)
                break
    return result


# --- dashboard -----------------------------------------------------------------------------


def _axis(since: datetime, now: datetime, seconds: int) -> list[int]:
    first = int(since.timestamp()) // seconds * seconds
    last = int(now.timestamp()) // seconds * seconds
    return list(range(first, last + 1, seconds))


def _histograms(rows, axis: list[int], seconds: int, key: str) -> dict[str, Any]:
    """p50/p95 per bucket, per model and overall from (bucket, model_name, `key`, n) rows."""
    index = {start: i for i, start in enumerate(axis)}
    per_bucket: list[dict[int, int]] = [{} for _ in axis]
    per_model: dict[str, dict[int, int]] = {}
    overall: dict[int, int] = {}
    for row in rows:
        if row[key] < 0:  # NULL (no first token, still running)
            continue
        position = index.get(_bucket_start(row["bucket"], seconds))
        histograms = [per_model.setdefault(row["model_name"], {}), overall]
        if position is not None:
            histograms.append(per_bucket[position])
        for histogram in histograms:
            histogram[row[key]] = histogram.get(row[key], 0) + row["n"]
    over_time = [histogram_percentiles(h) for h in per_bucket]
    return {
        "p50": [p["p50"] for p in over_time],
        "p95": [p["p95"] for p in over_time],
        "per_model": {model: histogram_percentiles(h) for model, h in sorted(per_model.items())},
        "overall": histogram_percentiles(overall),
    }


def _usage_and_ttft(generations, bucket, axis: list[int], seconds: int) -> tuple[dict, dict]:
    """Requests, tokens and errors per model per bucket, and the TTFT histogram, from one
    GROUP BY (bucket, model, status, TTFT bin)."""
    rows = list(
        generations.annotate(bucket=bucket, bin=_bin_expression("ttft_ms"))
        .values("bucket", "model_name", "status", "bin")
        .annotate(
            n=Count("id"),
            tokens=Sum(Coalesce("prompt_tokens", 0) + Coalesce("completion_tokens", 0)),
        )
        .order_by()
    )
    index = {start: i for i, start in enumerate(axis)}
    series: dict[str, dict[str, list[int]]] = {}
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        position = index.get(_bucket_start(row["bucket"], seconds))
        model = row["model_name"]
        if model not in series:
            series[model] = {k: [0] * len(axis) for k in ("requests", "tokens", "errors")}
            totals[model] = {"requests": 0, "tokens": 0, "errors": 0}
        values = {
            "requests": row["n"],
            "tokens": int(row["tokens"] or 0),
            "errors": row["n"] if row["status"] == Generation.Status.FAILED else 0,
        }
        for key, value in values.items():
            totals[model][key] += value
            if position is not None:
                series[model][key][position] += value
    return {"series": series, "totals": totals}, _histograms(rows, axis, seconds, "bin")


def _latency(generations, bucket, axis: list[int], seconds: int, field: str) -> dict[str, Any]:
    """p50/p95 of `field` per bucket and per model, from one histogram GROUP BY."""
    rows = (
        generations.annotate(bucket=bucket, bin=_bin_expression(field))
        .values("bucket", "model_name", "bin")
        .annotate(n=Count("id"))
        .order_by()
    )
    return _histograms(rows, axis, seconds, "bin")


def _routing_mix(since: datetime, now: datetime) -> dict[str, Any]:
    """Classifications per top category, and which models routed generations ran on.
    (Both ends of the range: SQLite's planner then takes the time index, not a full scan
    of the category index.)"""
    categories = (
        Classification.objects.filter(created_at__gte=since, created_at__lte=now)
        .values("top_category")
        .annotate(n=Count("id"))
        .order_by("-n", "top_category")
    )
    routed = (
        Generation.objects.filter(
            created_at__gte=since, created_at__lte=now, classification__isnull=False
        )
        .values("classification__top_category", "model_name")
        .annotate(n=Count("id"))
        .order_by("classification__top_category", "-n")
    )
    models: dict[str, dict[str, int]] = {}
    for row in routed:
        models.setdefault(row["classification__top_category"], {})[row["model_name"]] = row["n"]
    return {
        "categories": [{"category": r["top_category"], "count": r["n"]} for r in categories],
        "models": models,
    }


def _compression(
    since: datetime, now: datetime, bucket, axis: list[int], seconds: int
) -> dict[str, Any]:
    rows = (
        Compression.objects.filter(created_at__gte=since, created_at__lte=now)
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(n=Count("id"), original=Sum("original_tokens"), kept=Sum("compressed_tokens"))
        .order_by()
    )
    index = {start: i for i, start in enumerate(axis)}
    saved = [0] * len(axis)
    count = original = kept = 0
    for row in rows:
        count += row["n"]
        original += row["original"] or 0
        kept += row["kept"] or 0
        position = index.get(_bucket_start(row["bucket"], seconds))
        if position is not None:
            saved[position] += (row["original"] or 0) - (row["kept"] or 0)
    return {
        "count": count,
        "original_tokens": original,
        "compressed_tokens": kept,
        "saved_tokens": original - kept,
        "saved_share": round(1 - kept / original, 4) if original else None,
        "saved_series": saved,
    }


def dashboard_stats(*, span: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard charts, for the last hour / day / week."""
    length, seconds = SPANS[span]
    now = now or timezone.now()
    since = now - length
    axis = _axis(since, now, seconds)
    generations = Generation.objects.filter(created_at__gte=since, created_at__lte=now)
    bucket = _bucket_expression("created_at", seconds)
    usage, ttft = _usage_and_ttft(generations, bucket, axis, seconds)
    return {
        "range": span,
        "since": since,
        "until": now,
        "bucket_seconds": seconds,
        "axis": axis,
        "usage": usage,
        "ttft": ttft,
        "duration": _latency(generations, bucket, axis, seconds, "duration_ms"),
        "routing": _routing_mix(since, now),
        "compression": _compression(since, now, bucket, axis, seconds),
    }


# --- live ----------------------------------------------------------------------------------


def generations_in_flight(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Queued and streaming generations (newest first), leaving out ones a dead process
    left behind (older than TOKENFLOW_STALE_GENERATION_SECONDS; swept at start-up)."""
    now = now or timezone.now()
    since = now - timedelta(seconds=settings.TOKENFLOW_STALE_GENERATION_SECONDS)
    rows = (
        Generation.objects.filter(status__in=IN_FLIGHT, created_at__gte=since)
        .order_by("-created_at", "-id")
        .values("id", "model_name", "provider", "transport", "status", "created_at", "ttft_ms")[
            :LIVE_LIMIT
        ]
    )
    return [
        {
            **row,
            "created_at": row["created_at"].isoformat(),
            "age_s": round((now - row["created_at"]).total_seconds(), 1),
        }
        for row in rows
    ]


def batches_active() -> list[dict[str, Any]]:
    """Jobs that are pending, running or pausing, with their progress."""
    active = [*BatchJob.ACTIVE, BatchJob.Status.PAUSING]
    jobs = BatchJob.objects.filter(status__in=active).order_by("-created_at")[:LIVE_LIMIT]
    return [{"name": job.name, "model": job.model, **batch_progress(job=job)} for job in jobs]


def live_snapshot() -> dict[str, Any]:
    return {"generations": generations_in_flight(), "batches": batches_active()}


def bisect_bin(value: float) -> int:
    """The bin `_bin_expression` computes, in Python (tests check the SQL against it)."""
    return bisect.bisect_right(BIN_EDGES, value)
