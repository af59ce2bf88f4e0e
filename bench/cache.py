"""Response cache: semantic quality on a labelled set, and latency through a live server.

Quality (bench/data/cache_pairs.jsonl: paraphrases that should hit, near-misses that must
not): MiniLM cosine of each pair, with and without the lexical guard
(response_cache/guard.py). The threshold is chosen on the `tune` split (the lowest whose
precision there is >= 0.99); precision and recall are reported on `test` (held out from
the threshold choice; its near-misses were seen while the guard's rules were written) and
on `holdout` (written after the guard and the threshold were frozen, never tuned on).

Latency: a live daphne (embedded default: SQLite, in-process index) with a mock model of
zero latency; rounds interleave, per round: cache off (`cache: false`), a cacheable miss
(temperature 0, a new real question: exact lookup, then the embedding whenever a stored
entry passes the guard, semantic search, store), a guarded miss ("fact N about
volcanoes": no stored entry has the same number, so the lookup does not wait for the
embedding, which runs on while the model streams and is awaited to store), an exact hit,
a semantic hit (a paraphrase of a stored prompt), and an uncacheable request
(temperature 0.7: the cache is not consulted). TTFT is the first text_chunk of the SSE
stream; total is the whole stream.

    .venv/bin/python bench/cache.py [--rounds 60] [--port 18400] [--skip-quality]
"""

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Gateway, pct, summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "bench" / "data" / "cache_pairs.jsonl"
RESULTS = ROOT / "bench" / "results" / "cache.txt"
MODELS = ROOT / "var" / "models"
GRID = [round(0.70 + 0.005 * i, 3) for i in range(60)]  # 0.700 .. 0.995
TUNE_PRECISION = 0.99


# --- quality ------------------------------------------------------------------------------


def _scores(rows: list[dict], threshold: float, guarded: bool) -> dict:
    predicted = [r["sim"] >= threshold and (r["guard"] or not guarded) for r in rows]
    tp = sum(p and r["hit"] for p, r in zip(predicted, rows, strict=True))
    fp = sum(p and not r["hit"] for p, r in zip(predicted, rows, strict=True))
    positives = sum(r["hit"] for r in rows)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / positives if positives else 0.0,
        "tp": tp,
        "fp": fp,
        "positives": positives,
        "negatives": len(rows) - positives,
    }


def _choose(rows: list[dict], guarded: bool) -> float:
    for threshold in GRID:
        if _scores(rows, threshold, guarded)["precision"] >= TUNE_PRECISION:
            return threshold
    return GRID[-1]


def quality(lines: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
    import django

    django.setup()
    from django.conf import settings

    from response_cache.guard import compatible, features
    from routing.classifiers import minilm

    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    model = minilm()
    a = model.embed([r["a"] for r in rows])
    b = model.embed([r["b"] for r in rows])
    for row, sim in zip(rows, (a * b).sum(axis=1), strict=True):
        row["sim"] = float(sim)
        row["guard"] = compatible(features(row["a"]), features(row["b"]))
    splits = {name: [r for r in rows if r["split"] == name] for name in ("tune", "test", "holdout")}
    counts = ", ".join(
        f"{name} {sum(r['hit'] for r in part)}+{sum(not r['hit'] for r in part)}"
        for name, part in splits.items()
    )
    lines.append(f"semantic quality: {len(rows)} pairs (paraphrases+near-misses): {counts}")
    default = settings.TOKENFLOW_CACHE_SIMILARITY
    for guarded in (False, True):
        name = "cosine + guard" if guarded else "cosine only   "
        chosen = _choose(splits["tune"], guarded)
        for label, threshold in (("chosen on tune", chosen), ("the default", default)):
            parts = []
            for split in ("tune", "test", "holdout"):
                s = _scores(splits[split], threshold, guarded)
                parts.append(
                    f"{split}: P {s['precision']:.3f} R {s['recall']:.3f} "
                    f"(false hits {s['fp']}/{s['negatives']})"
                )
            lines.append(f"  {name} t={threshold:.3f} ({label}): " + "; ".join(parts))
    held = splits["test"] + splits["holdout"]
    s = _scores(held, default, True)
    lines.append(
        f"  held-out (test+holdout) at the default {default:.3f} with the guard: precision "
        f"{s['precision']:.3f}, recall {s['recall']:.3f} ({s['tp']}/{s['positives']} hits, "
        f"{s['fp']} false hits of {s['negatives']} near-misses)"
    )
    for r in sorted(held, key=lambda r: -r["sim"]):
        if not r["hit"] and r["sim"] >= default and r["guard"]:
            lines.append(f"    false hit {r['sim']:.3f}: {r['a']!r} ~ {r['b']!r}")
    for split in ("test", "holdout"):
        s = _scores(splits[split], default, True)
        lines.append(
            f"  {split} at the default with the guard: precision {s['precision']:.3f}, recall "
            f"{s['recall']:.3f}"
        )


# --- latency ------------------------------------------------------------------------------


def miss_prompts() -> list[str]:
    """Distinct real questions (the labelled set's first texts): a miss pays the exact
    lookup, and the embedding whenever a stored entry passes the guard."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(r["a"] for r in rows if r["a"] != "What is the capital of France?"))


async def one(client: httpx.AsyncClient, url: str, key: str, body: dict) -> tuple:
    started = time.perf_counter()
    ttft, cache = None, None
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        cache = response.headers.get("x-tokenflow-cache", "-")
        async for line in response.aiter_lines():
            if line.startswith("event: text_chunk") and ttft is None:
                ttft = time.perf_counter() - started
    return ttft * 1000, (time.perf_counter() - started) * 1000, cache


async def measure(rounds: int, url: str, key: str, model: str, gap: float) -> dict[str, list]:
    base = {"model": model, "max_tokens": 64}
    stored = "What is the capital of France?"
    paraphrase = "What's the capital city of France?"
    prompts = miss_prompts()
    kinds = {
        "off": lambda i: {**base, "prompt": stored, "temperature": 0, "cache": False},
        "miss": lambda i: {**base, "prompt": prompts[i % len(prompts)], "temperature": 0},
        "miss, guarded": lambda i: {
            **base,
            "prompt": f"Give me fact {i + 1} about volcanoes.",
            "temperature": 0,
        },
        "exact hit": lambda i: {**base, "prompt": stored, "temperature": 0},
        "semantic hit": lambda i: {**base, "prompt": paraphrase, "temperature": 0},
        "uncacheable": lambda i: {**base, "prompt": stored, "temperature": 0.7},
    }
    expected = {"off": "-", "miss": "miss", "exact hit": "exact", "semantic hit": "semantic"}
    expected["miss, guarded"] = "miss"
    expected["uncacheable"] = "-"
    results: dict[str, list] = {name: [] for name in kinds}
    async with httpx.AsyncClient(timeout=120) as client:
        await one(client, url, key, kinds["exact hit"](0))  # stores the answer ...
        for _ in range(300):  # ... in a task after the response: wait until it is there
            if (await one(client, url, key, kinds["exact hit"](0)))[2] == "exact":
                break
            await asyncio.sleep(0.1)
        for i in range(5):  # warm-up: MiniLM, connections, the index
            for name, make in kinds.items():
                if not name.startswith("miss"):
                    await one(client, url, key, make(i))
        for i in range(rounds):
            for name, make in kinds.items():
                # Let the previous request's background store (its embedding) finish: each
                # request is measured on an otherwise idle server.
                await asyncio.sleep(gap)
                ttft, total, cache = await one(client, url, key, make(i))
                if name == "miss" and cache != "miss":  # a prompt close to an earlier one
                    results.setdefault("(miss prompt that hit)", []).append((ttft, total))
                    continue
                assert cache == expected[name], (name, cache)
                results[name].append((ttft, total))
    return results


def latency(args, lines: list[str]) -> None:
    # The seeded tiktoken files (`make prepare`) live in the checkout's model directory.
    # One torch thread: on a shared 2-core box a 2-thread MiniLM pass of a short prompt
    # takes ~450 ms p50 under load (OpenMP threads wait on descheduled ones), 1 thread ~50 ms.
    gateway = Gateway(
        TOKENFLOW_MODEL_DIR=os.environ.get("TOKENFLOW_MODEL_DIR", str(MODELS)),
        TOKENFLOW_CLASSIFIER_THREADS=str(args.torch_threads),
    )
    gateway.prepare = gateway.shell(
        "from tokenflow_site.assets import prepare_tiktoken; prepare_tiktoken()"
    )
    gateway.port = args.port
    gateway.url = f"http://127.0.0.1:{args.port}"
    try:
        gateway.manage("migrate", "--noinput")
        gateway.shell(
            "from routing.models import ModelRanking; ModelRanking.objects.create("
            "name='bench/mock', provider='mock', upstream_model='echo', "
            "options={'response': 'Paris is the capital of France, on the Seine.'})"
        )
        key = gateway.api_key()
        gateway.start()
        results = asyncio.run(
            measure(args.rounds, f"{gateway.url}/api/generate", key, "bench/mock", args.gap)
        )
    finally:
        gateway.stop()
    lines.append(
        f"latency: {args.rounds} interleaved rounds through daphne (SQLite, mock model with "
        f"zero latency), SSE /api/generate, TOKENFLOW_CLASSIFIER_THREADS={args.torch_threads}, "
        f"{args.gap * 1000:.0f} ms between requests"
    )
    for metric, index in (("TTFT ms", 0), ("total ms", 1)):
        for name, values in results.items():
            lines.append(f"  {metric:8s} {name:14s}: {summary([v[index] for v in values])}")
    ttft = {name: [v[0] for v in values] for name, values in results.items()}
    total = {name: [v[1] for v in values] for name, values in results.items()}
    off = pct(ttft["off"], 50)
    for name in ("exact hit", "semantic hit", "miss", "miss, guarded", "uncacheable"):
        added = pct(ttft[name], 50) - off
        added_total = pct(total[name], 50) - pct(total["off"], 50)
        lines.append(
            f"  p50 vs cache off: {name:14s} TTFT {added:+7.2f} ms "
            f"(ratio {pct(ttft[name], 50) / off:4.2f}x), total {added_total:+7.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between requests")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    lines: list[str] = []
    if not args.skip_quality:
        quality(lines)
    if not args.skip_latency:
        latency(args, lines)
    text = "\n".join(lines)
    print(text)
    if not (args.skip_quality or args.skip_latency):
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
