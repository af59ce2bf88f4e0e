"""Reads behind the pages: the playground's options, the dashboard's aggregates and the live
snapshot (generations in flight, active batch jobs).

Every aggregate is computed by the database in one pass over the range (GROUP BY time
bucket x model): requests, tokens and errors per model, TTFT and duration percentiles
from a log-scale histogram (bins computed in SQL, percentiles read off the cumulative
counts here), the routing mix, compression savings, cost and cache hits. The day and week
ranges read the closed hours from the hourly rollups (rollups/) and only the rest raw.
bench/dashboard.py times both on 1,000,000 generations; the covering index of
routing/migrations/0003_dashboard_indexes.py makes the raw scans index-only.
"""

import bisect
import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, F, Func, IntegerField, Q, Sum
from django.db.models.functions import Coalesce, Substr
from django.utils import timezone

from batches.models import BatchJob
from batches.selectors import batch_progress
from compression.models import Compression
from pipelines.models import Pipeline
from rollups.models import ClassificationHour, CompressionHour, GenerationHour, RolledHour
from routing.models import CacheResult, Classification, Generation, ModelRanking
from routing.services.models import AUTO_MODEL
from routing.services.routes import routing_categories

# range -> (length, bucket seconds)
SPANS: dict[str, tuple[timedelta, int]] = {
    "hour": (timedelta(hours=1), 60),
    "day": (timedelta(days=1), 3600),
    "week": (timedelta(days=7), 3600),
}
# Histogram bin edges (ms), log-spaced by 15 %: a percentile is within 7.5 % of the truth.
BIN_RATIO = 1.15
BIN_EDGES = [round(BIN_RATIO**i, 3) for i in range(int(math.log(3_600_000) / math.log(BIN_RATIO)))]
PERCENTILES = (0.5, 0.95)
ROLLUP_SECONDS = 3600  # rollups.models: one row per hour
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


def bucket_expression(field: str, seconds: int):
    """The time bucket of a row, computed by the database. SQLite stores datetimes as
    'YYYY-MM-DD HH:MM:SS.ffffff' text, so a prefix is a bucket (16 chars = minute,
    15 = ten minutes, 13 = hour) without a per-row Python function; PostgreSQL bins."""
    if connection.vendor == "sqlite":
        return Substr(field, 1, {60: 16, 600: 15, 3600: 13}[seconds])
    return _DateBin(F(field), seconds)


@functools.lru_cache(maxsize=4096)
def bucket_start(value: Any, seconds: int) -> int:
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


def bin_expression(field: str) -> HistogramBin:
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


def _number(value: Any) -> float:
    return float(value or 0)


class _Stats:
    """Accumulates one dashboard refresh from raw grouped rows and rollup rows alike."""

    def __init__(self, axis: list[int], seconds: int):
        self.axis, self.seconds = axis, seconds
        self.index = {start: i for i, start in enumerate(axis)}
        self.series: dict[str, dict[str, list[int]]] = {}
        self.totals: dict[str, dict[str, Any]] = {}
        self.histograms = {
            kind: {"buckets": [{} for _ in axis], "models": {}, "overall": {}}
            for kind in ("ttft", "duration")
        }
        self.spend = {"cost_usd": 0.0, "cost_saved_usd": 0.0, "cache_exact": 0, "cache_semantic": 0}
        self.classified: dict[str, int] = {}
        self.routed: dict[str, dict[str, int]] = {}
        self.compressed = {"count": 0, "original": 0, "kept": 0}
        self.saved = [0] * len(axis)

    def position(self, value: Any) -> int | None:
        start = value if isinstance(value, int) else bucket_start(value, self.seconds)
        return self.index.get(start // self.seconds * self.seconds)

    def usage(self, position, model, status, *, n, tokens, cost, saved, exact, semantic) -> None:
        if model not in self.series:
            self.series[model] = {k: [0] * len(self.axis) for k in ("requests", "tokens", "errors")}
            self.totals[model] = {
                "requests": 0, "tokens": 0, "errors": 0, "cost_usd": 0.0, "cache_hits": 0
            }  # fmt: skip
        values = {
            "requests": n,
            "tokens": int(tokens or 0),
            "errors": n if status == Generation.Status.FAILED else 0,
        }
        for key, value in values.items():
            self.totals[model][key] += value
            if position is not None:
                self.series[model][key][position] += value
        self.totals[model]["cost_usd"] += _number(cost)
        self.totals[model]["cache_hits"] += exact + semantic
        self.spend["cost_usd"] += _number(cost)
        self.spend["cost_saved_usd"] += _number(saved)
        self.spend["cache_exact"] += exact
        self.spend["cache_semantic"] += semantic

    def histogram(self, kind: str, position, model: str, index: int, n: int) -> None:
        if index < 0:  # NULL (no first token, still running)
            return
        self.histogram_of_bucket(kind, position, index, n)
        self.histogram_of_model(kind, model, index, n)

    def histogram_of_bucket(self, kind: str, position, index: int, n: int) -> None:
        if position is not None:
            histogram = self.histograms[kind]["buckets"][position]
            histogram[index] = histogram.get(index, 0) + n

    def histogram_of_model(self, kind: str, model: str, index: int, n: int) -> None:
        parts = self.histograms[kind]
        for histogram in (parts["models"].setdefault(model, {}), parts["overall"]):
            histogram[index] = histogram.get(index, 0) + n

    def route(self, category: str, model: str, n: int) -> None:
        models = self.routed.setdefault(category, {})
        models[model] = models.get(model, 0) + n

    def classify(self, category: str, n: int) -> None:
        self.classified[category] = self.classified.get(category, 0) + n

    def compression(self, position, *, n: int, original: int, kept: int) -> None:
        self.compressed["count"] += n
        self.compressed["original"] += original or 0
        self.compressed["kept"] += kept or 0
        if position is not None:
            self.saved[position] += (original or 0) - (kept or 0)

    def _percentiles(self, kind: str) -> dict[str, Any]:
        parts = self.histograms[kind]
        over_time = [histogram_percentiles(h) for h in parts["buckets"]]
        return {
            "p50": [p["p50"] for p in over_time],
            "p95": [p["p95"] for p in over_time],
            "per_model": {m: histogram_percentiles(h) for m, h in sorted(parts["models"].items())},
            "overall": histogram_percentiles(parts["overall"]),
        }

    def result(self) -> dict[str, Any]:
        original, kept = self.compressed["original"], self.compressed["kept"]
        for totals in self.totals.values():
            totals["cost_usd"] = round(totals["cost_usd"], 9)
        routed = {
            c: dict(sorted(m.items(), key=lambda i: (-i[1], i[0]))) for c, m in self.routed.items()
        }
        return {
            "usage": {"series": self.series, "totals": self.totals},
            "spend": {
                **self.spend,
                "cost_usd": round(self.spend["cost_usd"], 9),
                "cost_saved_usd": round(self.spend["cost_saved_usd"], 9),
            },
            "ttft": self._percentiles("ttft"),
            "duration": self._percentiles("duration"),
            "routing": {
                "categories": [
                    {"category": c, "count": n}
                    for c, n in sorted(self.classified.items(), key=lambda i: (-i[1], i[0]))
                ],
                "models": dict(sorted(routed.items())),
            },
            "compression": {
                "count": self.compressed["count"],
                "original_tokens": original,
                "compressed_tokens": kept,
                "saved_tokens": original - kept,
                "saved_share": round(1 - kept / original, 4) if original else None,
                "saved_series": self.saved,
            },
        }


def _in_ranges(ranges: list[tuple[datetime, datetime, bool]], field: str = "created_at") -> Q:
    """created_at within any of the ranges (start inclusive; end inclusive when flagged)."""
    condition = Q(pk__in=[])
    for start, end, inclusive in ranges:
        upper = f"{field}__lte" if inclusive else f"{field}__lt"
        condition |= Q(**{f"{field}__gte": start, upper: end})
    return condition


def _raw_into(stats: _Stats, ranges: list[tuple[datetime, datetime, bool]]) -> None:
    """Aggregate the raw rows of `ranges` into `stats`: one GROUP BY (bucket, model, status,
    TTFT bin) for usage, spend and TTFT, one (bucket, model, duration bin), the routing mix
    and the compressions. (Both ends of every range: SQLite's planner then takes the time
    index, not a full scan of another index.)"""
    if not ranges:
        return
    bucket = bucket_expression("created_at", stats.seconds)
    generations = Generation.objects.filter(_in_ranges(ranges))
    rows = (
        generations.annotate(bucket=bucket, bin=bin_expression("ttft_ms"))
        .values("bucket", "model_name", "status", "bin")
        .annotate(
            n=Count("id"),
            tokens=Sum(Coalesce("prompt_tokens", 0) + Coalesce("completion_tokens", 0)),
            cost=Sum("cost_usd"),
            saved=Sum("cost_saved_usd"),
            exact=Count("id", filter=Q(cache=CacheResult.EXACT)),
            semantic=Count("id", filter=Q(cache=CacheResult.SEMANTIC)),
        )
        .order_by()
    )
    for row in rows:
        position = stats.position(row["bucket"])
        stats.usage(
            position,
            row["model_name"],
            row["status"],
            n=row["n"],
            tokens=row["tokens"],
            cost=row["cost"],
            saved=row["saved"],
            exact=row["exact"],
            semantic=row["semantic"],
        )
        stats.histogram("ttft", position, row["model_name"], row["bin"], row["n"])
    durations = (
        generations.annotate(bucket=bucket, bin=bin_expression("duration_ms"))
        .values("bucket", "model_name", "bin")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in durations:
        position = stats.position(row["bucket"])
        stats.histogram("duration", position, row["model_name"], row["bin"], row["n"])
    routed = (
        generations.filter(classification__isnull=False)
        .values("classification__top_category", "model_name")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in routed:
        stats.route(row["classification__top_category"], row["model_name"], row["n"])
    classified = (
        Classification.objects.filter(_in_ranges(ranges))
        .values("top_category")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in classified:
        stats.classify(row["top_category"], row["n"])
    compressions = (
        Compression.objects.filter(_in_ranges(ranges))
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(n=Count("id"), original=Sum("original_tokens"), kept=Sum("compressed_tokens"))
        .order_by()
    )
    for row in compressions:
        stats.compression(
            stats.position(row["bucket"]), n=row["n"], original=row["original"], kept=row["kept"]
        )


def _json_counts(column: str, group: str, start: datetime, end: datetime) -> list[tuple]:
    """(group, key, summed count) over the `{key: count}` maps in `column` of the rolled
    rows in [start, end): the database unpacks and adds the maps (json_each / jsonb_each),
    so no JSON is parsed here. `group` "hour" comes back as a Unix timestamp (parsing
    thousands of datetimes costs more than the query)."""
    table = GenerationHour._meta.db_table
    if connection.vendor == "postgresql":
        each, value = f"jsonb_each_text(g.{column})", "CAST(j.value AS bigint)"
        epoch = "CAST(EXTRACT(EPOCH FROM g.hour) AS bigint)"
    else:
        each, value = f"json_each(g.{column})", "j.value"
        epoch = "CAST(strftime('%%s', g.hour) AS integer)"
    key = epoch if group == "hour" else f"g.{group}"
    sql = (
        f"SELECT {key}, j.key, SUM({value}) FROM {table} g, {each} j "
        f"WHERE g.hour >= %s AND g.hour < %s GROUP BY {key}, j.key"
    )
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(sql, [adapt(start), adapt(end)])
        return cursor.fetchall()


def _rollup_into(stats: _Stats, start: datetime, end: datetime) -> None:
    """Add the rolled hours in [start, end) (hourly buckets only)."""
    hours = GenerationHour.objects.filter(hour__gte=start, hour__lt=end).values_list(
        "hour", "model_name", "status", "requests", "prompt_tokens", "completion_tokens",
        "cost_usd", "cost_saved_usd", "cache_exact", "cache_semantic",
    )  # fmt: skip
    for hour, model, status, n, prompt, completion, cost, saved, exact, semantic in hours:
        stats.usage(
            stats.position(int(hour.timestamp())), model, status, n=n,
            tokens=prompt + completion, cost=cost, saved=saved, exact=exact, semantic=semantic,
        )  # fmt: skip
    for kind in ("ttft", "duration"):
        column = f"{kind}_histogram"
        for hour, index, n in _json_counts(column, "hour", start, end):
            stats.histogram_of_bucket(kind, stats.position(hour), int(index), int(n))
        for model, index, n in _json_counts(column, "model_name", start, end):
            stats.histogram_of_model(kind, model, int(index), int(n))
    for model, category, n in _json_counts("categories", "model_name", start, end):
        stats.route(category, model, int(n))
    classified = (
        ClassificationHour.objects.filter(hour__gte=start, hour__lt=end)
        .values("top_category")
        .annotate(n=Sum("count"))
        .order_by()
    )
    for row in classified:
        stats.classify(row["top_category"], row["n"])
    compressions = CompressionHour.objects.filter(hour__gte=start, hour__lt=end).values_list(
        "hour", "count", "original_tokens", "compressed_tokens"
    )
    for hour, n, original, kept in compressions:
        stats.compression(stats.position(int(hour.timestamp())), n=n, original=original, kept=kept)


def dashboard_stats(
    *, span: str, now: datetime | None = None, rollup: bool = True
) -> dict[str, Any]:
    """Everything the dashboard charts, for the last hour / day / week.

    Hourly ranges (day, week) start at a whole hour and read the hours `rollups` has
    aggregated from its tables; the rest (the current hour, hours not rolled yet) from
    the raw rows. `rollup=False` reads everything raw (tests and the bench compare)."""
    length, seconds = SPANS[span]
    now = now or timezone.now()
    since = now - length
    if seconds == ROLLUP_SECONDS:
        since = datetime.fromtimestamp(int(since.timestamp()) // seconds * seconds, tz=UTC)
    axis = _axis(since, now, seconds)
    stats = _Stats(axis, seconds)
    ranges: list[tuple[datetime, datetime, bool]] = [(since, now, True)]
    rolled_hours = 0
    if rollup and seconds == ROLLUP_SECONDS:
        current = datetime.fromtimestamp(axis[-1], tz=UTC)
        rolled = {
            int(hour.timestamp())
            for hour in RolledHour.objects.filter(hour__gte=since, hour__lt=current).values_list(
                "hour", flat=True
            )
        }
        rolled_hours = len(rolled)
        ranges = []
        for start in axis:
            if start in rolled:
                continue
            begin = datetime.fromtimestamp(start, tz=UTC)
            if start == axis[-1]:
                ranges.append((begin, now, True))
            elif ranges and ranges[-1][1] == begin:
                ranges[-1] = (ranges[-1][0], begin + timedelta(seconds=seconds), False)
            else:
                ranges.append((begin, begin + timedelta(seconds=seconds), False))
        if rolled:
            _rollup_into(stats, since, current)
    _raw_into(stats, ranges)
    return {
        "range": span,
        "since": since,
        "until": now,
        "bucket_seconds": seconds,
        "axis": axis,
        "rolled_hours": rolled_hours,
        **stats.result(),
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
    """The bin `bin_expression` computes, in Python (tests check the SQL against it)."""
    return bisect.bisect_right(BIN_EDGES, value)
