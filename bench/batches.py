"""Batch jobs: crash-and-resume reliability and throughput (see docs/batches.md).

    .venv/bin/python bench/batches.py                 # both parts, writes bench/results/batches.txt
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/batches.py

(a) crash: 2,000 items, mock with random latency and 5% injected 429/500, two worker
    processes on PostgreSQL, one SIGKILLed three times at random moments and restarted.
(b) throughput: mock with 50 ms latency, concurrency 200, as a fraction of the ideal
    (concurrency / latency), on SQLite and PostgreSQL, next to a plain asyncio semaphore loop.
Each part runs in its own subprocess (its own database: a temp SQLite file, or a scratch
PostgreSQL database `tf_bench_batches` next to the one in DATABASE_URL).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "batches.txt"
SCRATCH_DB = "tf_bench_batches"


def scratch_postgres_url(base: str) -> str:
    """Recreate a scratch database on the server of `base`; return its URL."""
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH_DB}")
    return base.rsplit("/", 1)[0] + f"/{SCRATCH_DB}"


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_job(n: int, concurrency: int, options: dict, **job_options):
    from batches.services import batch_create
    from routing.models import ModelRanking

    ModelRanking.objects.update_or_create(
        name="mock/bench",
        defaults={"provider": "mock", "upstream_model": "echo", "options": options},
    )
    items = [
        (
            None,
            {"custom_id": f"item-{i}", "body": {"messages": [{"role": "user", "content": "hi"}]}},
        )
        for i in range(n)
    ]
    return batch_create(items=items, model="mock/bench", concurrency=concurrency, **job_options)


# --- (b) throughput ----------------------------------------------------------------------


def throughput(n: int, concurrency: int, latency: float) -> dict:
    import asyncio

    django_setup()
    migrate()
    from django.db import connection

    from batches.worker import BatchWorker
    from routing.models import ModelRanking
    from routing.providers.base import ChatRequest
    from routing.providers.registry import provider_for

    options = {"first_token_delay": latency, "response": "ok"}
    started = time.perf_counter()
    job = make_job(n, concurrency, options)
    create_s = time.perf_counter() - started
    provider = provider_for(ModelRanking.objects.get(name="mock/bench"))

    async def semaphore_loop() -> float:
        semaphore = asyncio.Semaphore(concurrency)
        request = ChatRequest(messages=[{"role": "user", "content": "hi"}], model="echo")

        async def one() -> None:
            async with semaphore:
                await provider.complete(request)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)

    async def batch_worker() -> float:
        worker = BatchWorker(job_ids=[job.pk], exit_when_idle=True, poll_seconds=0.2, publish=False)
        t0 = time.perf_counter()
        await worker.run()
        return n / (time.perf_counter() - t0)

    cpu = time.process_time()
    loop_rate = asyncio.run(semaphore_loop())
    loop_cpu, cpu = time.process_time() - cpu, time.process_time()
    worker_rate = asyncio.run(batch_worker())
    worker_cpu = time.process_time() - cpu
    job.refresh_from_db()
    ideal = concurrency / latency
    return {
        "database": connection.vendor,
        "items": n,
        "concurrency": concurrency,
        "latency_s": latency,
        "ideal_per_s": ideal,
        "create_s": round(create_s, 2),
        "semaphore_loop_per_s": round(loop_rate, 1),
        "semaphore_loop_fraction": round(loop_rate / ideal, 3),
        "batch_worker_per_s": round(worker_rate, 1),
        "batch_worker_fraction": round(worker_rate / ideal, 3),
        "worker_vs_loop": round(worker_rate / loop_rate, 3),
        "semaphore_loop_cpu_us_per_item": round(loop_cpu / n * 1e6, 1),
        "batch_worker_cpu_us_per_item": round(worker_cpu / n * 1e6, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "job_status": job.status,
        "completed": job.items.filter(status="completed").count(),
    }


# --- (a) crash and resume ----------------------------------------------------------------


def chaos_worker(job_id: int, worker_id: str, calls_log: str, lease: float) -> None:
    """A batch worker whose mock upstream has random latency, 5% 429/500, and logs each call."""
    django_setup()
    import asyncio

    from batches.worker import BatchWorker
    from routing.providers.base import ProviderError
    from routing.providers.mock import MockProvider

    original = MockProvider.stream
    log = os.open(calls_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def chaotic(self, request):
        os.write(log, b"1\n")  # one line per upstream call, even if we are killed right after
        await asyncio.sleep(random.uniform(0.05, 0.3))
        roll = random.random()
        if roll < 0.025:
            raise ProviderError("injected 429", code="rate_limited", status=429, retryable=True)
        if roll < 0.05:
            raise ProviderError("injected 500", code="upstream_error", status=502, retryable=True)
        async for chunk in original(self, request):
            yield chunk

    MockProvider.stream = chaotic
    worker = BatchWorker(
        job_ids=[job_id],
        worker_id=worker_id,
        lease_seconds=lease,
        poll_seconds=0.1,
        max_concurrency=20,
        exit_when_idle=True,
        publish=False,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        await worker.run()

    asyncio.run(main())


def crash(n: int = 2000, kills: int = 3, lease: float = 2.0, seed: int = 7) -> dict:
    django_setup()
    migrate()
    from batches.models import BatchAttempt, BatchItem, BatchJob

    rng = random.Random(seed)
    job = make_job(
        n,
        40,
        {"response": "ok"},
        max_attempts=12,
        retry_policy={"backoff_base": 0.05, "backoff_max": 1},
    )
    calls_log = tempfile.mktemp(prefix="tf_calls_")
    env = dict(os.environ)

    def spawn(worker_id: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                __file__,
                "chaos-worker",
                str(job.pk),
                worker_id,
                calls_log,
                str(lease),
            ],
            env=env,
        )

    started = time.perf_counter()
    victim, other = spawn("A0"), spawn("B")
    in_flight_at_kills = []
    for kill in range(1, kills + 1):
        victim_items = BatchItem.objects.filter(job=job, status="running", worker=f"A{kill - 1}")
        deadline = time.monotonic() + 60
        pending = BatchItem.objects.filter(job=job, status="pending")
        while not victim_items.exists() and pending.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # let the (re)started worker get going, then kill it at random
        time.sleep(rng.uniform(0.2, 1.5))
        running = victim_items.count()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        in_flight_at_kills.append(running)
        victim = spawn(f"A{kill}")
    for process in (victim, other):
        process.wait(timeout=600)
    elapsed = time.perf_counter() - started
    job = BatchJob.objects.get(pk=job.pk)
    items = BatchItem.objects.filter(job=job)
    attempts = BatchAttempt.objects.filter(item__job=job)
    succeeded_per_item = attempts.filter(status="succeeded").values("item_id")
    from django.db.models import Count

    duplicated = succeeded_per_item.annotate(n=Count("id")).filter(n__gt=1).count()
    with open(calls_log) as handle:
        calls = sum(1 for _ in handle)
    os.unlink(calls_log)
    retries = attempts.filter(status="failed").count()
    bound = n + retries + sum(in_flight_at_kills)
    return {
        "items": n,
        "job_status": job.status,
        "completed": items.filter(status="completed").count(),
        "lost": items.exclude(status="completed").count(),
        "duplicated_results": duplicated,
        "items_with_one_success": attempts.filter(status="succeeded")
        .values("item_id")
        .distinct()
        .count(),
        "kills": kills,
        "in_flight_at_kills": in_flight_at_kills,
        "upstream_calls": calls,
        "recorded_attempts": attempts.count(),
        "retries": retries,
        "bound_items_plus_retries_plus_in_flight": bound,
        "within_bound": calls <= bound,
        "elapsed_s": round(elapsed, 1),
    }


# --- orchestration -----------------------------------------------------------------------


def run_part(args: list[str], env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=1200
    )
    if out.returncode != 0:
        raise SystemExit(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", nargs="?", default="all")
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--items", type=int, default=16000)
    args = parser.parse_args()
    if args.part == "throughput":
        print(json.dumps(throughput(args.items, 200, 0.05)))
        return
    if args.part == "crash":
        print(json.dumps(crash()))
        return
    if args.part == "chaos-worker":
        job_id, worker_id, calls_log, lease = args.rest
        chaos_worker(int(job_id), worker_id, calls_log, float(lease))
        return

    pg_base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/test"
    lines = [f"# bench/batches.py  ({time.strftime('%Y-%m-%d %H:%M:%S')}, 2 shared cores)"]
    with tempfile.TemporaryDirectory() as var_dir:
        sqlite_env = {**os.environ, "TOKENFLOW_VAR_DIR": var_dir}
        sqlite_env.pop("DATABASE_URL", None)
        sqlite_env.pop("REDIS_URL", None)
        results = {
            "throughput_sqlite": run_part(["throughput", "--items", str(args.items)], sqlite_env)
        }
        try:
            pg_env = {**sqlite_env, "DATABASE_URL": scratch_postgres_url(pg_base)}
        except Exception as exc:  # no PostgreSQL: report SQLite only
            lines.append(f"PostgreSQL unavailable ({exc}); skipped the PG parts")
            pg_env = None
        if pg_env:
            results["throughput_postgres"] = run_part(
                ["throughput", "--items", str(args.items)], pg_env
            )
            pg_env["DATABASE_URL"] = scratch_postgres_url(pg_base)
            results["crash_postgres"] = run_part(["crash"], pg_env)
    for name, result in results.items():
        lines.append(f"\n## {name}")
        lines.extend(f"{key}: {value}" for key, value in result.items())
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
