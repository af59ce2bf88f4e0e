"""Dashboard aggregation on 1,000,000 generations (see docs/pages.md).

    .venv/bin/python bench/dashboard.py                       # SQLite file under var/
    .venv/bin/python bench/dashboard.py --postgres postgres://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/dashboard.py --rows 200000 --out bench/results/dashboard.txt

Seeds a fresh database (migrated schema; bulk inserts with executemany): N generations
spread evenly over 30 days across 6 models (4 % failed, a third routed through one of 8
categories), 100,000 classifications and 50,000 compressions. Then times
`web.selectors.dashboard_stats` (every aggregate of one dashboard refresh) for each range
on the raw rows, backfills the hourly rollups (rollups.services.rollup_hours), times the
same refreshes reading the rollups, and the live snapshot: raw and rollup in one run.
PostgreSQL runs in a scratch database `tf_bench_dashboard` next to the given one.
"""

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRATCH_DB = "tf_bench_dashboard"
MODELS = [
    ("local/smollm2-135m-instruct", "local"),
    ("mock/echo", "mock"),
    ("groq/llama-3.3-70b-versatile", "groq"),
    ("groq/llama-3.1-8b-instant", "groq"),
    ("openai/gpt-4o-mini", "openai"),
    ("openrouter/deepseek/deepseek-r1", "openrouter"),
]
CATEGORIES = ["reasoning", "coding", "creative", "chat", "math", "summarize", "translate", "qa"]


def scratch_postgres_url(base: str, *, reuse: bool = False) -> tuple[str, bool]:
    """The scratch database's URL, and whether an existing one was kept (`reuse`)."""
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (SCRATCH_DB,)
        ).fetchone()
        if not (reuse and exists):
            conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {SCRATCH_DB}")
    return base.rsplit("/", 1)[0] + f"/{SCRATCH_DB}", bool(reuse and exists)


def setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(rows: int, now: datetime) -> float:
    from django.db import connection, transaction

    rng = random.Random(13)
    span = 30 * 86400
    started = time.perf_counter()
    ts = (lambda d: d) if connection.vendor == "postgresql" else (lambda d: d.isoformat(" "))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO routing_classification (engine, categories, multi_label, top_category,"
            " confidence, scores, duration_ms, created_at, feedback_category, feedback_source)"
            " VALUES (%s, '[]', %s, %s, %s, '[]', %s, %s, '', '')",
            [
                ("embedding", False, rng.choice(CATEGORIES), rng.random(), 9.0,
                 ts(now - timedelta(seconds=rng.random() * span)))
                for _ in range(100_000)
            ],
        )  # fmt: skip
        cursor.execute("SELECT MIN(id), MAX(id) FROM routing_classification")
        low, high = cursor.fetchone()
        cursor.executemany(
            "INSERT INTO compression_compression (original_text, compressed_text,"
            " original_tokens, compressed_tokens, ratio, question, instruction, force_tokens,"
            " engine, model_name, skipped, duration_ms, created_at) VALUES ('', '', %s, %s, %s,"
            " '', '', '[]', 'fast', '', %s, 120.0, %s)",
            [
                (o, int(o * r), r, False, ts(now - timedelta(seconds=rng.random() * span)))
                for o, r in ((rng.randint(200, 4000), rng.uniform(0.3, 0.7)) for _ in range(50_000))
            ],
        )  # fmt: skip
        batch = []
        sql = (
            "INSERT INTO routing_generation (model_name, provider, upstream_model, transport,"
            " status, parameters, input_messages, output_text, finish_reason, prompt_tokens,"
            " completion_tokens, ttft_ms, duration_ms, attempts, error_code, error_message,"
            " created_at, classification_id, cost_usd, cache, cost_saved_usd, error_detail,"
            " options) VALUES (%s, %s, '', %s, %s, '{}', '[]', '', %s, %s, %s, %s, %s, '[]',"
            " %s, '', %s, %s, %s, %s, %s, '', '{}')"
        )
        for i in range(rows):
            name, provider = MODELS[i % len(MODELS)]
            failed = rng.random() < 0.04
            ttft = rng.lognormvariate(5.5, 0.6)
            created = now - timedelta(seconds=span * i / rows)
            cache = "" if failed else rng.choice(("", "", "miss", "exact", "semantic"))
            cost = rng.randint(0, 20_000) / 10**8
            batch.append((
                name, provider, rng.choice(("api", "ws", "openai")),
                "failed" if failed else "completed", "" if failed else "stop",
                rng.randint(10, 800), None if failed else rng.randint(5, 600),
                None if failed else ttft, ttft + rng.lognormvariate(7, 0.8),
                "upstream_error" if failed else "", ts(created),
                rng.randint(low, high) if i % 3 == 0 else None,
                cost, cache, cost if cache in ("exact", "semantic") else None,
            ))  # fmt: skip
            if len(batch) == 50_000:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE") if connection.connection.autocommit else None
    else:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return time.perf_counter() - started


def timed(function, repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (a scratch database is used)")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep an already seeded SQLite file / scratch PostgreSQL database (no seeding)",
    )
    args = parser.parse_args()
    reuse = False
    if args.postgres:
        database_url, reuse = scratch_postgres_url(args.postgres, reuse=args.reuse)
    else:
        path = ROOT / "var" / "bench_dashboard.sqlite3"
        path.parent.mkdir(exist_ok=True)
        reuse = args.reuse and path.exists()
        for suffix in ("", "-wal", "-shm") if not reuse else ():
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite:///{path}"
    setup(database_url)

    from django.db import connection

    from rollups.models import GenerationHour, RolledHour
    from rollups.services import rollup_hours, rollup_pending
    from routing.models import Generation
    from web import selectors

    if reuse:
        now = Generation.objects.order_by("-created_at").values_list("created_at", flat=True)[0]
        rows, seeded = Generation.objects.count(), "reused the seeded database"
    else:
        now = datetime.now(UTC)
        rows, seconds = args.rows, seed(args.rows, now)
        seeded = f"{seconds:.1f} s ({args.rows / seconds:,.0f} generations/s, executemany)"
    lines = [
        f"dashboard bench: {rows:,} generations over 30 days, 100,000 classifications, "
        f"50,000 compressions; {connection.vendor}; {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}",
        f"seed: {seeded}",
    ]
    # The raw path first (every aggregate over the raw rows), then the rollups.
    raw = {}
    for span in ("hour", "day", "week"):
        raw[span] = timed(
            lambda span=span: selectors.dashboard_stats(span=span, now=now, rollup=False)
        )
    RolledHour.objects.all().delete()
    started = time.perf_counter()
    hours = rollup_hours(now - timedelta(days=31), now, now=now)
    backfill = time.perf_counter() - started
    started = time.perf_counter()
    again = rollup_hours(now - timedelta(days=8), now, now=now)
    rebuild_week = time.perf_counter() - started
    idle_pass = timed(lambda: rollup_pending(now=now), repeat=5)
    rolled = {}
    for span in ("hour", "day", "week"):
        rolled[span] = timed(lambda span=span: selectors.dashboard_stats(span=span, now=now))
    live = timed(selectors.live_snapshot, repeat=5)
    lines += [
        f"rollup backfill: {len(hours)} hours in {backfill:.1f} s "
        f"({GenerationHour.objects.count():,} generation-hour rows); "
        f"re-rolling the last 8 days ({len(again)} hours): {rebuild_week:.1f} s; "
        f"a sweep pass with nothing to roll: {1000 * idle_pass:.1f} ms",
        "",
        f"{'refresh (median of 3)':<24}{'rows in range':>14}{'raw':>11}{'rollup':>11}"
        f"{'raw/rollup':>12}",
    ]
    for span in ("hour", "day", "week"):
        in_range = Generation.objects.filter(created_at__gte=now - selectors.SPANS[span][0]).count()
        lines.append(
            f"{'dashboard_stats ' + span:<24}{in_range:>14,}{1000 * raw[span]:>8.0f} ms"
            f"{1000 * rolled[span]:>8.0f} ms{raw[span] / rolled[span]:>11.1f}x"
        )
    lines.append(f"{'live snapshot':<24}{'':>14}{1000 * live:>8.1f} ms")
    lines.append(f"load average after the timed runs: {os.getloadavg()[0]:.1f}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
