"""Cost of spend tracking and budgets (issue 15), measured in one run.

A throwaway TokenFlow (daphne, SQLite, local-memory cache) with a zero-latency mock model
that has prices, and two API keys: one with a monthly budget far too large to trigger (so
every request reserves, settles and renders the remaining-budget header) and one without.
One client sends POST /api/generate (SSE, read to the end) sequentially, alternating the
two keys so machine noise hits both alike; then GET /api/usage (group_by=model) over the
rows this made. A `manage.py shell` times budget_reserve + budget_settle on the local-memory
cache and, with --redis, on Redis.

    .venv/bin/python bench/spend.py [--requests 200] [--redis redis://127.0.0.1:6379/3]
        [--port 18300] [--out bench/results/spend.txt]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import PY, ROOT, Gateway, pct  # noqa: E402

MODEL = "bench/priced"
SETUP = f"""
from decimal import Decimal
from accounts.models import ApiKey
from routing.models import ModelRanking
ModelRanking.objects.create(
    name="{MODEL}", provider="mock", upstream_model="echo", rank=1,
    input_price_per_mtok=Decimal(3), output_price_per_mtok=Decimal(15),
    options={{"response": "one two three four five six seven eight nine ten"}},
)
print(ApiKey.issue(name="budget", max_budget_usd=Decimal(10**6), budget_period="month")[1])
print(ApiKey.issue(name="plain")[1])
"""
MICRO = """
import json, statistics, time
from decimal import Decimal
from django.core.cache import cache
from accounts.models import ApiKey
from routing.services import spend
key = ApiKey.objects.get(name="budget")
cache.clear()
def piece():
    hold = spend.budget_reserve(api_key=key, amount=Decimal("0.0003"))
    spend.budget_settle(hold, Decimal("0.0001"))
for _ in range(50):
    piece()
runs = []
for _ in range(7):
    t = time.perf_counter()
    for _ in range(500):
        piece()
    runs.append((time.perf_counter() - t) * 1e6 / 500)
t = time.perf_counter()
for _ in range(200):
    spend.budget_header(key)
header = (time.perf_counter() - t) * 1e6 / 200
print("MICRO " + json.dumps({"reserve_settle_us": statistics.median(runs), "header_us": header}))
"""


def micro(gateway: Gateway, redis: str | None) -> dict:
    env = dict(gateway.env)
    if redis:
        env["REDIS_URL"] = redis
    out = subprocess.run(
        [PY, "manage.py", "shell", "-c", MICRO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout.decode()
    return json.loads(next(x for x in out.splitlines() if x.startswith("MICRO "))[6:])


def generate(client: httpx.Client, key: str) -> float:
    started = time.perf_counter()
    with client.stream(
        "POST",
        "/api/generate",
        json={"model": MODEL, "prompt": "Count to ten.", "max_tokens": 16},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        body = b"".join(response.iter_bytes())
    assert response.status_code == 200 and b"end_stream" in body, body[-300:]
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "spend.txt"))
    args = parser.parse_args()
    # The seeded tiktoken files (prepared once by `manage.py prepare_assets`): no network.
    models = os.environ.get("TOKENFLOW_MODEL_DIR") or str(ROOT / "var" / "models")
    gateway = Gateway(TOKENFLOW_MODEL_DIR=models)
    gateway.port, gateway.url = args.port, f"http://127.0.0.1:{args.port}"
    lines: list[str] = []
    try:
        gateway.start()
        budget_key, plain_key = gateway.shell(SETUP).splitlines()[-2:]
        times: dict[str, list[float]] = {"budget": [], "no budget": []}
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for _ in range(10):  # warm up both paths
                generate(client, budget_key), generate(client, plain_key)
            for i in range(args.requests):
                order = [("budget", budget_key), ("no budget", plain_key)]
                for kind, key in order if i % 2 else order[::-1]:
                    times[kind].append(generate(client, key))
            header = client.post(
                "/api/generate",
                json={"model": MODEL, "prompt": "x"},
                headers={"Authorization": f"Bearer {budget_key}"},
            ).headers.get("x-tokenflow-budget-remaining")
            usage = []
            for _ in range(20):
                started = time.perf_counter()
                client.get(
                    "/api/usage?group_by=model", headers={"Authorization": f"Bearer {budget_key}"}
                ).raise_for_status()
                usage.append((time.perf_counter() - started) * 1000)
        lines.append(
            f"POST /api/generate (SSE, mock model, zero latency), {args.requests} sequential "
            "requests per key, alternating keys; ms"
        )
        for kind, values in times.items():
            lines.append(f"  {kind:10s} p50 {pct(values, 50):7.2f}  p95 {pct(values, 95):7.2f}")
        added = pct(times["budget"], 50) - pct(times["no budget"], 50)
        ratio = pct(times["budget"], 50) / pct(times["no budget"], 50)
        lines.append(f"  budget adds {added:+.2f} ms p50 (ratio {ratio:.3f})")
        lines.append(f"  x-tokenflow-budget-remaining after the run: {header}")
        lines.append(
            f"GET /api/usage?group_by=model over the key's {args.requests + 11} generations "
            f"(20 calls): p50 {pct(usage, 50):.2f} ms"
        )
        local = micro(gateway, None)
        lines.append(
            f"budget_reserve + budget_settle, local-memory cache: {local['reserve_settle_us']:.1f} "
            f"us per request; budget_header {local['header_us']:.1f} us"
        )
        if args.redis:
            remote = micro(gateway, args.redis)
            lines.append(
                f"budget_reserve + budget_settle, Redis ({args.redis}): "
                f"{remote['reserve_settle_us']:.1f} us per request (two Lua round trips); "
                f"budget_header {remote['header_us']:.1f} us"
            )
    finally:
        gateway.stop()
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
