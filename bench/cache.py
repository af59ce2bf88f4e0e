"""Response cache: semantic quality on a labelled set, and latency through a live server.

Quality (bench/data/cache_pairs.jsonl: paraphrases that should hit, near-misses that must
not): the cosine of each pair by both embedders (response_cache/embedders.py: MiniLM and
the static model distilled from it), with and without the lexical guard
(response_cache/guard.py). A threshold is chosen on the `tune` split (the lowest whose
precision there is >= 0.99); precision and recall are reported on `test` (held out from
the threshold choice; its near-misses were seen while the guard's rules were written) and
on `holdout` (written after the guard and the MiniLM threshold were frozen, never tuned
on). Then the MiniLM path's static prefilter (its floor chosen on `tune`) and static fast
path: what they cost in held-out recall and precision.

Latency: one live daphne per embedder (embedded default: SQLite, in-process index) with a
mock model of zero latency; rounds interleave every kind on every server, per round:
cache off (`cache: false`), a cacheable miss (temperature 0, a new real question: exact
lookup, then, MiniLM, the embedding whenever a stored entry passes the guard and the
static prefilter; semantic search; store), a guarded miss ("fact N about volcanoes": no
stored entry has the same number, so the lookup does not wait for an embedding), an exact
hit, a semantic hit (a paraphrase only MiniLM hits: MiniLM server only), a close semantic
hit (a paraphrase the static model hits too: the static embedder, or the MiniLM path's
static fast path), and an uncacheable request (temperature 0.7: the cache is not
consulted). TTFT is the first text_chunk of the SSE stream; total is the whole stream.

    .venv/bin/python bench/cache.py [--rounds 100] [--port 18400]
        [--embedders minilm,static,minilm-torch]
        [--skip-quality] [--skip-latency]
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Gateway, pct, summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "bench" / "data" / "cache_pairs.jsonl"
RESULTS = ROOT / "bench" / "results" / "cache.txt"
MODELS = ROOT / "var" / "models"
GRID = [round(0.70 + 0.005 * i, 3) for i in range(60)]  # 0.700 .. 0.995
TUNE_PRECISION = 0.99


# --- quality ------------------------------------------------------------------------------


def _scores(
    rows: list[dict], threshold: float, guarded: bool, key: str = "sim", floor=0.0, fast=None
) -> dict:
    """Predicted hit: `key` similarity >= threshold, the guard (when `guarded`) and the
    static prefilter similarity >= `floor`; or (given `fast`) the guard and a static
    similarity >= `fast` (the MiniLM path's static fast path)."""
    predicted = [
        (r["guard"] or not guarded)
        and (
            (r[key] >= threshold and r["static"] >= floor)
            or (fast is not None and r["static"] >= fast)
        )
        for r in rows
    ]
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


def _choose(rows: list[dict], guarded: bool, key: str = "sim") -> float:
    for threshold in GRID:
        if _scores(rows, threshold, guarded, key)["precision"] >= TUNE_PRECISION:
            return threshold
    return GRID[-1]


def _line(splits: dict, threshold: float, guarded: bool, key: str, floor=0.0, fast=None) -> str:
    parts = []
    for split in ("tune", "test", "holdout"):
        s = _scores(splits[split], threshold, guarded, key, floor, fast)
        parts.append(
            f"{split}: P {s['precision']:.3f} R {s['recall']:.3f} "
            f"(false hits {s['fp']}/{s['negatives']})"
        )
    return "; ".join(parts)


def quality(lines: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")
    import django

    django.setup()
    from django.conf import settings

    from response_cache.embedders import DEFAULT_THRESHOLDS, get_embedder
    from response_cache.guard import compatible, features
    from routing.classifiers import minilm

    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    model = minilm()
    static = get_embedder("static")
    sims = {
        "sim": (model.embed([r["a"] for r in rows]) * model.embed([r["b"] for r in rows])),
        "static": (
            static.embed_many([r["a"] for r in rows]) * static.embed_many([r["b"] for r in rows])
        ),
    }
    int8 = get_embedder("minilm-int8")  # the int8 ONNX export (prepare_models)
    sims["int8"] = np.stack([int8.embed(r["a"]) for r in rows]) * np.stack(
        [int8.embed(r["b"]) for r in rows]
    )
    for key, products in sims.items():
        for row, sim in zip(rows, products.sum(axis=1), strict=True):
            row[key] = float(sim)
    for row in rows:
        row["guard"] = compatible(features(row["a"]), features(row["b"]))
    splits = {name: [r for r in rows if r["split"] == name] for name in ("tune", "test", "holdout")}
    counts = ", ".join(
        f"{name} {sum(r['hit'] for r in part)}+{sum(not r['hit'] for r in part)}"
        for name, part in splits.items()
    )
    lines.append(f"semantic quality: {len(rows)} pairs (paraphrases+near-misses): {counts}")
    held = splits["test"] + splits["holdout"]
    for embedder, key in (("minilm", "sim"), ("minilm-int8", "int8"), ("static", "static")):
        default = DEFAULT_THRESHOLDS[embedder]
        lines.append(f" embedder {embedder} ({static.id if key == 'static' else 'MiniLM'}):")
        for guarded in (False, True):
            name = "cosine + guard" if guarded else "cosine only   "
            chosen = _choose(splits["tune"], guarded, key)
            for label, threshold in (("chosen on tune", chosen), ("the default", default)):
                lines.append(
                    f"  {name} t={threshold:.3f} ({label}): "
                    + _line(splits, threshold, guarded, key)
                )
        for split, part in (("held-out (test+holdout)", held), *splits.items()):
            if split == "tune":
                continue
            s = _scores(part, default, True, key)
            lines.append(
                f"  {split} at the default {default:.3f} with the guard: precision "
                f"{s['precision']:.3f}, recall {s['recall']:.3f} ({s['tp']}/{s['positives']} "
                f"hits, {s['fp']} false hits of {s['negatives']} near-misses)"
            )
    # The MiniLM path's prefilter: the static similarity below which a lookup skips the
    # MiniLM pass. Chosen on tune: the lowest static similarity of a pair MiniLM + guard
    # calls a hit there, rounded down to 0.05; what it costs is measured on held-out pairs.
    default = DEFAULT_THRESHOLDS["minilm"]
    hits = [r["static"] for r in splits["tune"] if r["sim"] >= default and r["guard"]]
    suggested = math.floor(min(hits) * 20) / 20
    floor = settings.TOKENFLOW_CACHE_PREFILTER
    lines.append(
        f" minilm + static prefilter: lowest static similarity of a tune-split MiniLM hit "
        f"{min(hits):.3f} -> prefilter {suggested:.2f} (TOKENFLOW_CACHE_PREFILTER={floor:.2f})"
    )
    lines.append(
        f"  minilm + guard + prefilter {floor:.2f} at t={default:.3f}: "
        + _line(splits, default, True, "sim", floor)
    )
    lost = [r for r in held if r["sim"] >= default and r["guard"] and r["static"] < floor]
    s = _scores(held, default, True, "sim", floor)
    lines.append(
        f"  held-out: precision {s['precision']:.3f}, recall {s['recall']:.3f}; MiniLM hits "
        f"the prefilter drops: {len(lost)}"
    )
    fast = DEFAULT_THRESHOLDS["static"]
    lines.append(
        f" minilm + prefilter + static fast path (static >= {fast:.3f} and the guard: served "
        f"without MiniLM): " + _line(splits, default, True, "sim", floor, fast)
    )
    s = _scores(held, default, True, "sim", floor, fast)
    quick = sum(r["hit"] and r["guard"] and r["static"] >= fast for r in held)
    lines.append(
        f"  held-out: precision {s['precision']:.3f}, recall {s['recall']:.3f} "
        f"({s['tp']}/{s['positives']} hits, {quick} of them by the fast path; {s['fp']} false "
        f"hits of {s['negatives']} near-misses)"
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


async def measure(rounds: int, targets: dict[str, tuple[str, str]], model: str, gap: float):
    """Per target (embedder -> (url, key)), per kind: (TTFT, total) of each round; the
    rounds interleave every kind on every target."""
    base = {"model": model, "max_tokens": 64}
    stored = "What is the capital of France?"
    # A paraphrase MiniLM hits (0.957) and the static model does not (0.904), and one
    # both hit at their defaults (static 0.967, MiniLM 0.976: the static fast path).
    paraphrase = "What's the capital city of France?"
    close = "So, what is the capital of France?"
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
        "semantic, close": lambda i: {**base, "prompt": close, "temperature": 0},
        "uncacheable": lambda i: {**base, "prompt": stored, "temperature": 0.7},
    }
    expected = {"off": "-", "miss": "miss", "exact hit": "exact", "semantic hit": "semantic"}
    expected["miss, guarded"] = "miss"
    expected["semantic, close"] = "semantic"
    expected["uncacheable"] = "-"
    results = {target: {name: [] for name in kinds} for target in targets}
    async with httpx.AsyncClient(timeout=120) as client:
        for target, (url, key) in targets.items():
            await one(client, url, key, kinds["exact hit"](0))  # stores the answer ...
            for _ in range(300):  # ... in a task after the response: wait until it is there
                if (await one(client, url, key, kinds["exact hit"](0)))[2] == "exact":
                    break
                await asyncio.sleep(0.1)
            for i in range(5):  # warm-up: the embedders, connections, the index
                for name, make in kinds.items():
                    if name.startswith("miss") or (name == "semantic hit" and target == "static"):
                        continue
                    await one(client, url, key, make(i))
        for i in range(rounds):
            for name, make in kinds.items():
                for target, (url, key) in targets.items():
                    # Let the previous request's background store (its embedding) finish:
                    # each request is measured on an otherwise idle server.
                    await asyncio.sleep(gap)
                    ttft, total, cache = await one(client, url, key, make(i))
                    if name == "semantic hit" and target == "static":
                        continue  # below the static model's threshold: a miss there
                    if name == "miss" and cache != "miss":  # a prompt close to an earlier one
                        results[target].setdefault("(miss prompt that hit)", []).append(
                            (ttft, total)
                        )
                        continue
                    assert cache == expected[name], (target, name, cache)
                    results[target][name].append((ttft, total))
    return results


def latency(args, lines: list[str]) -> None:
    # The seeded tiktoken files and the static model (`make prepare`) live in the
    # checkout's model directory. One torch thread: on a shared 2-core box a 2-thread
    # MiniLM pass of a short prompt takes ~450 ms p50 under load (OpenMP threads wait on
    # descheduled ones), 1 thread ~50 ms.
    embedders = args.embedders.split(",")
    gateways = {}
    targets = {}
    try:
        for offset, embedder in enumerate(embedders):
            gateway = Gateway(
                TOKENFLOW_MODEL_DIR=os.environ.get("TOKENFLOW_MODEL_DIR", str(MODELS)),
                TOKENFLOW_CLASSIFIER_THREADS=str(args.torch_threads),
                # "minilm-torch": MiniLM without the ONNX Runtime export, as before it.
                TOKENFLOW_CACHE_EMBEDDER=embedder.removesuffix("-torch"),
                TOKENFLOW_CACHE_ONNX="0" if embedder.endswith("-torch") else "1",
            )
            gateways[embedder] = gateway
            gateway.port = args.port + offset
            gateway.url = f"http://127.0.0.1:{gateway.port}"
            gateway.manage("migrate", "--noinput")
            gateway.shell(
                "from routing.models import ModelRanking; ModelRanking.objects.create("
                "name='bench/mock', provider='mock', upstream_model='echo', "
                "options={'response': 'Paris is the capital of France, on the Seine.'})"
            )
            targets[embedder] = (f"{gateway.url}/api/generate", gateway.api_key())
            gateway.start()
        results = asyncio.run(measure(args.rounds, targets, "bench/mock", args.gap))
    finally:
        for gateway in gateways.values():
            gateway.stop()
    lines.append(
        f"latency: {args.rounds} interleaved rounds through daphne, one server per embedder "
        f"({', '.join(embedders)}; SQLite, mock model with zero latency), SSE /api/generate, "
        f"TOKENFLOW_CLASSIFIER_THREADS={args.torch_threads}, {args.gap * 1000:.0f} ms between "
        "requests; every kind and server interleaved in each round"
    )
    for embedder, per_kind in results.items():
        lines.append(f" TOKENFLOW_CACHE_EMBEDDER={embedder}:")
        for metric, index in (("TTFT ms", 0), ("total ms", 1)):
            for name, values in per_kind.items():
                if values:
                    lines.append(f"  {metric:8s} {name:14s}: {summary([v[index] for v in values])}")
        ttft = {name: [v[0] for v in values] for name, values in per_kind.items()}
        total = {name: [v[1] for v in values] for name, values in per_kind.items()}
        off = pct(ttft["off"], 50)
        kinds_reported = (
            "exact hit",
            "semantic hit",
            "semantic, close",
            "miss",
            "miss, guarded",
            "uncacheable",
        )
        for name in kinds_reported:
            if not ttft.get(name):
                continue
            added = pct(ttft[name], 50) - off
            added_total = pct(total[name], 50) - pct(total["off"], 50)
            lines.append(
                f"  p50 vs cache off: {name:14s} TTFT {added:+7.2f} ms "
                f"(ratio {pct(ttft[name], 50) / off:4.2f}x), total {added_total:+7.2f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--port", type=int, default=18400, help="first port (one per embedder)")
    parser.add_argument(
        "--embedders",
        default="minilm,static,minilm-torch",
        help="comma-separated; minilm-torch: MiniLM on torch (TOKENFLOW_CACHE_ONNX=0)",
    )
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
