"""Benchmark the default (MiniLM embedding) zero-shot classifier and the learning router.

    .venv/bin/python bench/classification.py              (make bench-classify)
    .venv/bin/python bench/classification.py --learning   (only the learning-router part)

Learning router (issue 12): bench/data/routing.jsonl, 180 hand-written prompts in 6
everyday categories (30 each) with one-sentence descriptions in
bench/data/routing_categories.json, split per category with a fixed seed into 5 example
utterances and 25 held-out test prompts. Reports held-out accuracy with bare labels,
descriptions only, descriptions + 5 examples, each of these three with a traffic
adaptation learnt without labels from prompts disjoint from the reported ones
(routing.services.adaptation), a linear head on the 5 examples, the fine-tuned router
on the 5 examples (seeds 0-2; `--top-layers N` to try another K), their calibration error,
p50 latency for one prompt x 6 categories x 5 examples, and both trained routers' 5-fold
cross-validated accuracy against zero-shot on the same folds.

Reports accuracy on bench/data/classification.jsonl with bare labels and with the
descriptions of bench/data/classification_categories.json, the prompts that fail,
multi-label calibration, p50 latency for one prompt with 6 categories after warm-up,
and throughput (one prompt per call, and batched). Writes bench/results/classification.txt.
"""

import json
import os
import random
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


def split(rows, labels, seed: int, k: int = 5):
    """Per category, a seeded shuffle: the first k are examples, the rest held out."""
    rng = random.Random(seed)
    examples, test = [], []
    for label in labels:
        members = [r for r in rows if r["label"] == label]
        rng.shuffle(members)
        examples += members[:k]
        test += members[k:]
    return examples, test


FINETUNE_SEEDS = 3
ADAPTED = ("bare labels", "descriptions only", "descriptions + 5 examples")


def top_layers() -> int:
    from routing.services.training import TOP_LAYERS

    return (
        int(sys.argv[sys.argv.index("--top-layers") + 1])
        if "--top-layers" in sys.argv
        else TOP_LAYERS
    )


def learning(classifier) -> None:
    from routing.classifiers.embedding import LinearHead
    from routing.services.adaptation import WEIGHT, Adaptation, adapt_fit
    from routing.services.evaluation import expected_calibration_error
    from routing.services.training import (
        CV_ROUNDS,
        LEARNING_RATE,
        ROUNDS,
        cross_validate,
        finetune_head,
        finetune_train,
        fit_head,
    )

    rows = [json.loads(line) for line in (DATA / "routing.jsonl").open()]
    described = json.loads((DATA / "routing_categories.json").read_text())
    labels = list(described)
    say("## Learning router (issue 12)")
    say(
        f"data: bench/data/routing.jsonl, {len(rows)} prompts, {len(labels)} categories "
        f"({', '.join(labels)}); per category 5 examples + 25 held-out (seeded split)"
    )

    def run(categories, test, head=None, adaptation=None):
        results = classifier.classify_many(
            [r["prompt"] for r in test], categories, head=head, adaptation=adaptation
        )
        tops = [r.ranked()[0] for r in results]
        hits = [top == row["label"] for (top, _), row in zip(tops, test, strict=True)]
        ece = expected_calibration_error([c for _, c in tops], hits)
        return sum(hits) / len(test), ece

    table: dict[str, list[float]] = {}
    eces: dict[str, float] = {}
    tuned = "fine-tuned router on the 5 examples"
    TOP_LAYERS = top_layers()  # noqa: N806
    train_seconds = []
    for seed in range(5):
        examples, test = split(rows, labels, seed)
        texts = {lab: tuple(r["prompt"] for r in examples if r["label"] == lab) for lab in labels}
        bare = [Category(lab) for lab in labels]
        descriptions = [Category(lab, described[lab]) for lab in labels]
        variants = {
            "bare labels": (bare, None),
            "descriptions only": (descriptions, None),
            "bare labels + 5 examples": ([Category(lab, "", texts[lab]) for lab in labels], None),
            "descriptions + 5 examples": (
                [Category(lab, described[lab], texts[lab]) for lab in labels],
                None,
            ),
        }
        x = classifier.example_vectors([r["prompt"] for r in examples])
        y = np.array([labels.index(r["label"]) for r in examples])
        weights, bias = fit_head(x, y, len(labels))
        variants["trained head on the 5 examples"] = (
            variants["descriptions + 5 examples"][0],
            LinearHead(labels, weights, bias),
        )
        if seed < FINETUNE_SEEDS:  # SetFit-style top layers (train_router's default)
            started = time.perf_counter()
            finetuned = finetune_head(
                classifier,
                descriptions,
                [r["prompt"] for r in examples],
                y,
                seed=seed,
                top_layers=TOP_LAYERS,
            )
            train_seconds.append(time.perf_counter() - started)
            variants[tuned] = (variants["descriptions + 5 examples"][0], finetuned)
            if seed == 0:
                first_finetuned = finetuned
        for name, (categories, head) in variants.items():
            acc, ece = run(categories, test, head)
            table.setdefault(name, []).append(acc)
            if seed == 0:
                eces[name] = ece
        # Traffic adaptation (routing.services.adaptation), no labels: the held-out prompts
        # are split in two seeded halves; each half is scored by an adaptation fitted on
        # the OTHER half's prompts + the 30 example prompts, all unlabelled.
        order = random.Random(100 + seed).sample(range(len(test)), len(test))
        halves = (order[: len(order) // 2], order[len(order) // 2 :])
        for name in ADAPTED:
            categories = variants[name][0]
            labels_of = [c.label for c in categories]
            hits, confidences = [], []
            for scored, pool_half in (halves, halves[::-1]):
                pool = [r["prompt"] for r in examples] + [test[i]["prompt"] for i in pool_half]
                embedded = classifier.example_vectors(pool)
                zero_shot = classifier.similarities(pool, categories, embedded=embedded)
                prototypes, center = adapt_fit(zero_shot, embedded)
                adaptation = Adaptation(tuple(labels_of), prototypes, center, WEIGHT)
                rows_scored = [test[i] for i in scored]
                results = classifier.classify_many(
                    [r["prompt"] for r in rows_scored], categories, adaptation=adaptation
                )
                for row, result in zip(rows_scored, results, strict=True):
                    top, confidence = result.ranked()[0]
                    hits.append(top == row["label"])
                    confidences.append(confidence)
            key = f"{name} + traffic adaptation"
            table.setdefault(key, []).append(sum(hits) / len(hits))
            if seed == 0:
                eces[key] = expected_calibration_error(confidences, hits)
                if name == "descriptions + 5 examples":
                    first_adaptation = adaptation
        for name in ADAPTED[:2]:  # a small pool: only the 30 example prompts, unlabelled
            categories = variants[name][0]
            pool = [r["prompt"] for r in examples]
            embedded = classifier.example_vectors(pool)
            zero_shot = classifier.similarities(pool, categories, embedded=embedded)
            prototypes, center = adapt_fit(zero_shot, embedded)
            adaptation = Adaptation(tuple(c.label for c in categories), prototypes, center, WEIGHT)
            acc, ece = run(categories, test, adaptation=adaptation)
            key = f"{name} + adaptation, 30-prompt pool"
            table.setdefault(key, []).append(acc)
            if seed == 0:
                eces[key] = ece
    say("held-out accuracy (150 prompts), seed 0 | mean of the seeds | ECE (seed 0):")
    for name, values in table.items():
        say(
            f"  {name:48s} {values[0]:.1%} | {statistics.mean(values):.1%} "
            f"(min {min(values):.1%}, max {max(values):.1%}; seeds 0-{len(values) - 1}) "
            f"| ECE {eces[name]:.3f}"
        )
    say(
        "  (+ traffic adaptation: prototypes learnt without labels from 105 unlabelled prompts, "
        "the 30 example prompts + half of the held-out ones; each held-out half is scored by "
        "the adaptation fitted on the other half: no reported prompt was in its pool; "
        "weight, temperature and rounds tuned on bench/data/classification.jsonl, "
        "bench/adaptation_tuning.py; 30-prompt pool: fitted on the example prompts only, "
        "scored on all 150 held-out prompts)"
    )
    say(
        f"  ({tuned}: top {TOP_LAYERS} of 6 layers fine-tuned, lr {LEARNING_RATE:g}, {ROUNDS} "
        f"rounds of pair sampling on 5 examples + the description per category, training "
        + ", ".join(f"{t:.0f}" for t in train_seconds)
        + f" s; ECE with the default temperature; torch threads {torch.get_num_threads()})"
    )

    # Trained router: 5-fold CV on all 180 labelled prompts, head vs zero-shot
    # (descriptions + the training folds' examples), the same folds (train_router's code).
    descriptions = [Category(lab, described[lab]) for lab in labels]
    y = np.array([labels.index(r["label"]) for r in rows])
    cv = cross_validate(classifier, descriptions, [r["prompt"] for r in rows], y, 5)
    say(
        f"trained router, 5-fold CV on {len(rows)} examples: head {cv.cv_accuracy:.1%}, "
        f"zero-shot {cv.zero_shot_accuracy:.1%} (same folds; folds "
        + ", ".join(f"{h:.0%}/{z:.0%}" for h, z in cv.fold_accuracies)
        + ")"
    )

    started = time.perf_counter()
    cv = finetune_train(
        classifier, descriptions, [r["prompt"] for r in rows], y, 5, top_layers=TOP_LAYERS
    )
    say(
        f"fine-tuned router (train_router's default: top {TOP_LAYERS} layers, {CV_ROUNDS} rounds "
        f"per fold, {ROUNDS} for the final fit), 5-fold CV on {len(rows)} examples: router "
        f"{cv.cv_accuracy:.1%}, zero-shot {cv.zero_shot_accuracy:.1%} (same folds; folds "
        + ", ".join(f"{h:.0%}/{z:.0%}" for h, z in cv.fold_accuracies)
        + f"); time: CV {cv.cv_seconds:.0f} s, final fit {cv.fit_seconds:.0f} s, stored "
        f"{len(cv.head.to_blob()) / 1e6:.1f} MB (fp16), temperature {cv.head.temperature}"
    )

    examples, _ = split(rows, labels, 0)
    five = [
        Category(lab, described[lab], tuple(r["prompt"] for r in examples if r["label"] == lab))
        for lab in labels
    ]
    prompt = "Can you help me write a function that removes duplicates from a list?"
    head = variants["trained head on the 5 examples"][1]
    # a router that does not cover every category: zero-shot columns need the base top layers
    covered = [c for c in five if c.label != "casual-conversation"]
    five_of_six = finetune_head(
        classifier,
        covered,
        [t for c in covered for t in c.examples],
        np.array([i for i, c in enumerate(covered) for _ in c.examples]),
        top_layers=TOP_LAYERS,
        rounds=1,
    )
    torch.set_num_threads(1)
    timings = {
        "descriptions + 5 examples": {},
        "+ trained head": {"head": head},
        "+ traffic adaptation": {"adaptation": first_adaptation},
        f"+ fine-tuned router (top {TOP_LAYERS} layers)": {"head": first_finetuned},
        f"+ fine-tuned router on 5 of the 6 (base and router top {TOP_LAYERS} layers)": {
            "head": five_of_six
        },
    }
    for options in timings.values():
        timed(lambda o=options: classifier.classify(prompt, five, **o), 10)
    # interleaved (one call of each per round), so load from other processes hits all alike
    times = {name: [] for name in timings}
    cpu = dict.fromkeys(timings, 0.0)
    for _ in range(100):
        for name, options in timings.items():
            cpu_started = time.process_time()
            times[name] += timed(lambda o=options: classifier.classify(prompt, five, **o), 1)
            cpu[name] += time.process_time() - cpu_started
    base = statistics.median(times["descriptions + 5 examples"])
    for name, values in times.items():
        say(
            f"latency, 1 prompt x 6 categories x 5 examples, {name}, 1 thread: p50 "
            f"{statistics.median(values):.1f} ms ({statistics.median(values) / base:.2f}x), "
            f"p90 {sorted(values)[89]:.1f} ms (CPU {cpu[name] * 1000 / 100:.1f} ms per call; "
            f"interleaved; load average {os.getloadavg()[0]:.1f})"
        )
    texts = [r["prompt"] for r in rows]
    for max_batch in (1, 16):
        settings.TOKENFLOW_CLASSIFIER_MAX_BATCH = max_batch
        with ThreadPoolExecutor(8) as pool:
            started = time.perf_counter()
            list(pool.map(lambda t: classifier.classify(t, five), texts))
            spent = time.perf_counter() - started
        label = "off" if max_batch == 1 else f"up to {max_batch}"
        say(
            f"  8 concurrent callers, 5 examples per category, request batching {label}: "
            f"{len(texts) / spent:.0f} prompts/s"
        )
    say()


def main() -> None:
    if "--learning" in sys.argv:
        classifier = EmbeddingClassifier()
        classifier.load()
        say(f"# Learning-router benchmark ({classifier.engine_name}, fp32)")
        learning(classifier)
        out = RESULTS.with_name("classification_learning.txt")
        out.write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {out.relative_to(ROOT)}")
        return
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
    say()
    learning(classifier)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
