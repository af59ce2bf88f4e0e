"""Pick the fine-tuned router's settings (top layers K, rounds) on a TUNING set, not on
the held-out prompts: bench/data/classification.jsonl (72 prompts, 6 categories, a
different labelled set from bench/data/routing.jsonl), split per category with seed 0
into 5 examples (+ the category description as one more) and 7 test prompts.

    .venv/bin/python bench/router_tuning.py [--rounds 6] [--layers 1,2,3,0] [--seeds 0,1,2]
    .venv/bin/python bench/router_tuning.py --rounds 0 --layers 2 --append   (no fine-tuning)
    .venv/bin/python bench/router_tuning.py --layers 3 --rounds 12 --lr 2e-5,1e-4 --append

Writes (or with --append, extends) bench/results/router_tuning.txt. K=0 means all 6
layers; --rounds 0 is the frozen model (same prototype + nearest-example scoring). One
thread.
"""

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.classification import split  # noqa: E402
from routing.classifiers.embedding import EmbeddingClassifier  # noqa: E402
from routing.classifiers.finetune import (  # noqa: E402
    bottom_states,
    embed_with,
    prototypes,
    router_sims,
    setfit_layers,
    split_point,
)

DATA = ROOT / "bench" / "data"


def option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    torch.set_num_threads(1)
    rounds = int(option("--rounds", "6"))
    ks = [int(k) for k in option("--layers", "1,2,3,0").split(",")]
    seeds = [int(s) for s in option("--seeds", "0").split(",")]
    lrs = [float(x) for x in option("--lr", "2e-5").split(",")]
    rows = [json.loads(line) for line in (DATA / "classification.jsonl").open()]
    described = json.loads((DATA / "classification_categories.json").read_text())
    labels = list(described)
    classifier = EmbeddingClassifier()
    classifier.load()
    model, tokenizer = classifier._model, classifier._tokenizer
    lines = [f"# Router fine-tuning, tuning set bench/data/classification.jsonl, rounds {rounds}"]
    print(lines[0], flush=True)
    for seed in seeds:
        examples, test = split(rows, labels, seed)
        texts = [r["prompt"] for r in examples] + [described[lab] for lab in labels]
        y = np.array([labels.index(r["label"]) for r in examples] + list(range(len(labels))))
        truth = np.array([labels.index(r["label"]) for r in test])
        for k, lr in [(k, lr) for k in ks for lr in lrs]:
            start = split_point(model, k)
            started = time.perf_counter()
            train_bottoms = bottom_states(model, tokenizer, texts, start)
            test_bottoms = bottom_states(model, tokenizer, [r["prompt"] for r in test], start)
            layers = setfit_layers(
                model, train_bottoms, y.tolist(), start=start, rounds=rounds, seed=seed, lr=lr
            )
            spent = time.perf_counter() - started
            vectors = embed_with(model, layers, train_bottoms)
            protos = prototypes(vectors, y, len(labels))
            sims = router_sims(embed_with(model, layers, test_bottoms), protos, vectors, y)
            acc = float((sims.argmax(1) == truth).mean())
            line = (
                f"seed {seed} K={k or 'all'} lr {lr:g}: tuning accuracy {acc:.1%} "
                f"({len(test)} prompts), training {spent:.0f} s "
                f"(1 thread, load average {os.getloadavg()[0]:.1f})"
            )
            print(line, flush=True)
            lines.append(line)
    out = ROOT / "bench" / "results" / "router_tuning.txt"
    if "--append" in sys.argv:
        with out.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
    elif "--no-write" not in sys.argv:
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
