"""Benchmark the default (MiniLM embedding) zero-shot classifier.

    .venv/bin/python bench/classification.py        (make bench-classify)

Reports accuracy on bench/data/classification.jsonl with bare labels and with the
descriptions of bench/data/classification_categories.json, the prompts that fail,
multi-label calibration, p50 latency for one prompt with 6 categories after warm-up,
and throughput (one prompt per call, and batched). Writes bench/results/classification.txt.
"""

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from django.conf import settings  # noqa: E402

from routing.classifiers.base import Category  # noqa: E402
from routing.classifiers.embedding import EmbeddingClassifier, softmax  # noqa: E402

DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results" / "classification.txt"
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def accuracy(classifier, rows, categories):
    results = classifier.classify_many([r["prompt"] for r in rows], categories)
    failures = []
    for row, result in zip(rows, results, strict=True):
        (top, score), (second, second_score) = result.ranked()[:2]
        if top != row["label"]:
            failures.append((row, top, score))
    return 1 - len(failures) / len(rows), failures


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    rows = [json.loads(line) for line in (DATA / "classification.jsonl").open()]
    described = json.loads((DATA / "classification_categories.json").read_text())
    with_descriptions = [Category(label, text) for label, text in described.items()]
    bare = [Category(label) for label in described]
    classifier = EmbeddingClassifier()
    started = time.perf_counter()
    classifier.load()
    say(f"# Zero-shot classification benchmark ({classifier.engine_name}, fp32)")
    load_s = time.perf_counter() - started
    say(f"model load: {load_s:.1f} s; torch threads: {torch.get_num_threads()}")
    say(f"data: {len(rows)} prompts, {len(described)} categories ({', '.join(described)})")
    say(
        f"calibration: temperature {settings.TOKENFLOW_CLASSIFIER_TEMPERATURE}, "
        f"multi-label threshold {settings.TOKENFLOW_CLASSIFIER_THRESHOLD}"
    )
    say()
    for name, categories in (("bare labels", bare), ("with descriptions", with_descriptions)):
        acc, failures = accuracy(classifier, rows, categories)
        say(f"accuracy, {name}: {acc:.1%} ({len(rows) - len(failures)}/{len(rows)})")
        for row, top, score in failures:
            say(f"  FAIL [{row['label']} -> {top} {score:.2f}] {row['prompt'][:90]}")
    say()

    # Calibration: where the true category's similarity sits, and the softmax temperature
    # with the lowest negative log-likelihood on this set.
    gold = np.array([list(described).index(r["label"]) for r in rows])
    sims = classifier.similarities([r["prompt"] for r in rows], with_descriptions)
    true_sims = sims[np.arange(len(rows)), gold]
    masked = sims.copy()
    masked[np.arange(len(rows)), gold] = -1
    say(
        "similarity quartiles: true category "
        f"{np.percentile(true_sims, [25, 50, 75]).round(3).tolist()}, best wrong one "
        f"{np.percentile(masked.max(1), [25, 50, 75]).round(3).tolist()}"
    )
    nll = {}
    for temperature in (0.01, 0.02, 0.03, 0.05, 0.08, 0.1):
        probs = np.stack([softmax(row, temperature) for row in sims])
        nll[temperature] = float(-np.log(probs[np.arange(len(rows)), gold] + 1e-12).mean())
    say("softmax NLL by temperature: " + ", ".join(f"{t}: {v:.3f}" for t, v in nll.items()))

    # Multi-label: the true category should be above 0.5, few others should.
    results = classifier.classify_many(
        [r["prompt"] for r in rows], with_descriptions, multi_label=True
    )
    true_hits = sum(
        dict(r.scores)[row["label"]] > 0.5 for row, r in zip(rows, results, strict=True)
    )
    positives = [sum(s > 0.5 for _, s in r.scores) for r in results]
    say(
        f"multi-label: true category > 0.5 for {true_hits}/{len(rows)}; "
        f"mean categories > 0.5 per prompt: {statistics.mean(positives):.2f}"
    )
    say()

    texts = [r["prompt"] for r in rows]
    prompt = "Write a Python function that merges two sorted lists and explain its complexity."
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        timed(lambda: classifier.classify(prompt, with_descriptions), 10)  # warm-up
        cpu_started = time.process_time()
        times = timed(lambda: classifier.classify(prompt, with_descriptions), 100)
        cpu_ms = (time.process_time() - cpu_started) * 1000 / 100
        say(
            f"latency, 1 prompt x 6 categories, {threads} thread(s): p50 "
            f"{statistics.median(times):.1f} ms, p90 {sorted(times)[89]:.1f} ms "
            f"(CPU time {cpu_ms:.1f} ms per call; load average {os.getloadavg()[0]:.1f})"
        )
        sequential = sum(
            timed(lambda: [classifier.classify(t, with_descriptions) for t in texts], 1)
        )
        say(f"  throughput, one prompt per call: {len(texts) / sequential * 1000:.0f} prompts/s")
        for batch in (8, 32):
            chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
            spent = sum(
                timed(
                    lambda c=chunks: [classifier.classify_many(x, with_descriptions) for x in c], 1
                )
            )
            say(f"  throughput, batches of {batch}: {len(texts) / spent * 1000:.0f} prompts/s")
        for max_batch in (1, 16):
            settings.TOKENFLOW_CLASSIFIER_MAX_BATCH = max_batch
            with ThreadPoolExecutor(8) as pool:
                started = time.perf_counter()
                list(pool.map(lambda t: classifier.classify(t, with_descriptions), texts * 2))
                spent = time.perf_counter() - started
            label = "off" if max_batch == 1 else f"up to {max_batch}"
            say(
                f"  throughput, 8 concurrent callers, request batching {label}: "
                f"{len(texts) * 2 / spent:.0f} prompts/s"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
