"""The dashboard's hourly rollups: equal to the raw aggregation, following finished
generations, and a backfill that can run twice."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from compression.models import Compression
from rollups.models import ClassificationHour, CompressionHour, GenerationHour, RolledHour
from rollups.services import GRACE, hour_floor, rollup_hours, rollup_pending
from routing.models import Classification, Generation
from web import selectors

MODELS = ("mock/a", "mock/b", "groq/c")
CATEGORIES = ("coding", "math", "chat")


def _at(row, when) -> None:
    type(row).objects.filter(pk=row.pk).update(created_at=when)


def _seed(now: datetime, rng: random.Random, rows: int = 500, hours: int = 30) -> None:
    """Generations, classifications and compressions spread over the last `hours`."""
    classifications = []
    for i in range(60):
        c = Classification.objects.create(
            engine="keyword", top_category=CATEGORIES[i % 3], confidence=0.9
        )
        _at(c, now - timedelta(seconds=rng.random() * hours * 3600))
        classifications.append(c)
    for _ in range(30):
        original = rng.randint(100, 900)
        c = Compression.objects.create(
            original_text="x", compressed_text="x", original_tokens=original,
            compressed_tokens=original // 3, ratio=0.33, engine="fast",
        )  # fmt: skip
        _at(c, now - timedelta(seconds=rng.random() * hours * 3600))
    for i in range(rows):
        status = rng.choice(["completed"] * 8 + ["failed", "cancelled"])
        cache = rng.choice(["", "", "miss", "exact", "semantic"])
        done = status == "completed"
        g = Generation.objects.create(
            model_name=MODELS[i % 3],
            provider="mock",
            status=status,
            prompt_tokens=rng.randint(5, 500),
            completion_tokens=rng.randint(1, 300) if done else None,
            ttft_ms=rng.lognormvariate(5, 0.8) if done or rng.random() < 0.5 else None,
            duration_ms=rng.lognormvariate(7, 0.6),
            cost_usd=Decimal(rng.randint(0, 10_000)) / 10**7,
            cache="" if not done else cache,
            cost_saved_usd=Decimal("0.0001") if done and cache in ("exact", "semantic") else None,
            classification=rng.choice(classifications) if i % 3 == 0 else None,
        )
        _at(g, now - timedelta(seconds=rng.random() * hours * 3600))


def _without(stats: dict, *keys: str) -> dict:
    return {k: v for k, v in stats.items() if k not in keys}


@pytest.mark.django_db
@pytest.mark.parametrize("span", ["day", "week"])
def test_the_rollup_path_equals_the_raw_aggregation(span):
    now = timezone.now()
    _seed(now, random.Random(13))
    busy = Generation.objects.create(model_name="mock/a", provider="mock", status="streaming")
    _at(busy, now - timedelta(hours=5))  # its hour stays on the raw path
    rolled = rollup_pending(now=now)
    assert rolled >= 29 and not RolledHour.objects.filter(hour=hour_floor(busy.created_at))
    assert not RolledHour.objects.filter(hour=hour_floor(now)).exists()  # the current hour

    mixed = selectors.dashboard_stats(span=span, now=now)
    raw = selectors.dashboard_stats(span=span, now=now, rollup=False)
    assert mixed["rolled_hours"] > 20 and raw["rolled_hours"] == 0
    assert _without(mixed, "rolled_hours") == _without(raw, "rolled_hours")

    # ... and both are the rows: counts, tokens, cost, cache hits, percentiles within a bin.
    rows = Generation.objects.filter(created_at__gte=mixed["since"], created_at__lte=now)
    assert mixed["since"] == datetime.fromtimestamp(mixed["axis"][0], tz=UTC)
    for model in MODELS:
        mine = rows.filter(model_name=model)
        totals = mixed["usage"]["totals"][model]
        assert totals["requests"] == mine.count()
        assert totals["errors"] == mine.filter(status="failed").count()
        assert totals["tokens"] == sum(
            (g.prompt_tokens or 0) + (g.completion_tokens or 0) for g in mine
        )
        assert totals["cost_usd"] == pytest.approx(float(sum(g.cost_usd or 0 for g in mine)))
    spend = mixed["spend"]
    assert spend["cache_exact"] == rows.filter(cache="exact").count() > 0
    assert spend["cache_semantic"] == rows.filter(cache="semantic").count() > 0
    assert spend["cost_saved_usd"] == pytest.approx(float(sum(g.cost_saved_usd or 0 for g in rows)))
    routed = rows.filter(classification__isnull=False)
    assert sum(sum(m.values()) for m in mixed["routing"]["models"].values()) == routed.count()
    classified = Classification.objects.filter(created_at__gte=mixed["since"])
    assert sum(c["count"] for c in mixed["routing"]["categories"]) == classified.count()
    compressions = Compression.objects.filter(created_at__gte=mixed["since"])
    assert mixed["compression"]["count"] == compressions.count()
    assert mixed["compression"]["saved_tokens"] == sum(
        c.original_tokens - c.compressed_tokens for c in compressions
    )
    for field, key in (("ttft_ms", "ttft"), ("duration_ms", "duration")):
        values = sorted(v for v in rows.values_list(field, flat=True) if v is not None)
        for fraction, name in ((0.5, "p50"), (0.95, "p95")):
            exact = values[min(len(values) - 1, int(fraction * len(values)))]
            assert abs(mixed[key]["overall"][name] - exact) / exact < 0.15


@pytest.mark.django_db
def test_a_generation_that_finishes_reaches_the_rollup_on_the_next_sweep():
    now = timezone.now()
    running = Generation.objects.create(
        model_name="mock/a", provider="mock", status="streaming", prompt_tokens=7
    )
    _at(running, now - timedelta(hours=2))
    running.refresh_from_db()
    current = Generation.objects.create(
        model_name="mock/b", provider="mock", status="completed", prompt_tokens=3
    )
    call_command("sweep_generations", "--older-than", "86400")  # rolls the closed hours
    hour = hour_floor(running.created_at)
    assert RolledHour.objects.filter(hour=hour - timedelta(hours=1)).exists()
    assert not RolledHour.objects.filter(hour=hour).exists()  # still running: raw
    stats = selectors.dashboard_stats(span="day")
    assert stats["usage"]["totals"]["mock/a"]["requests"] == 1
    assert stats["usage"]["totals"]["mock/b"]["requests"] == 1  # the current hour, live

    running.status, running.completion_tokens, running.cost_usd = "completed", 11, Decimal("0.5")
    running.cache, running.ttft_ms, running.duration_ms = "exact", 120.0, 900.0
    running.save()
    assert rollup_pending() == 1
    row = GenerationHour.objects.get(hour=hour)
    assert (row.model_name, row.status, row.requests) == ("mock/a", "completed", 1)
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (7, 11, Decimal("0.5"))
    assert row.cache_exact == 1 and row.ttft_count == 1 and row.ttft_sum_ms == 120.0
    assert row.ttft_histogram == {str(selectors.bisect_bin(120.0)): 1}
    stats = selectors.dashboard_stats(span="day")
    assert stats["rolled_hours"] >= 2
    assert stats["usage"]["totals"]["mock/a"]["tokens"] == 18
    assert stats["spend"] == {
        "cost_usd": 0.5, "cost_saved_usd": 0.0, "cache_exact": 1, "cache_semantic": 0
    }  # fmt: skip
    assert stats["ttft"]["per_model"]["mock/a"]["p50"] == pytest.approx(120, rel=0.08)
    current.refresh_from_db()
    assert not RolledHour.objects.filter(hour=hour_floor(current.created_at)).exists()


@pytest.mark.django_db
def test_backfill_is_idempotent():
    now = timezone.now()
    _seed(now, random.Random(5), rows=200, hours=60)

    def snapshot():
        return (
            sorted(
                GenerationHour.objects.values_list(
                    "hour",
                    "model_name",
                    "status",
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "cost_usd",
                    "cache_exact",
                    "ttft_histogram",
                    "duration_histogram",
                    "categories",
                )
            ),  # fmt: skip
            sorted(ClassificationHour.objects.values_list("hour", "top_category", "count")),
            sorted(CompressionHour.objects.values_list("hour", "count", "original_tokens")),
            sorted(RolledHour.objects.values_list("hour", "generations")),
        )

    call_command("rollup_dashboard", "--all")
    first = snapshot()
    closed = Generation.objects.filter(created_at__lt=hour_floor(timezone.now() - GRACE)).count()
    assert len(first[3]) >= 59 and sum(n for _, n in first[3]) == closed > 150
    assert sum(row[3] for row in first[0]) == closed
    call_command("rollup_dashboard", "--all")
    assert snapshot() == first
    rollup_hours(now - timedelta(days=2), now)  # part of the range again
    assert snapshot() == first
    week = selectors.dashboard_stats(span="week", now=now)
    assert _without(week, "rolled_hours") == _without(
        selectors.dashboard_stats(span="week", now=now, rollup=False), "rolled_hours"
    )


@pytest.mark.django_db
def test_backfill_rejects_a_bad_range():
    with pytest.raises(Exception, match="--days"):
        call_command("rollup_dashboard", "--days", "0")
