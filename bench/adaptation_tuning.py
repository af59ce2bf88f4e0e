"""Pick the traffic adaptation's weight, temperature and rounds (routing.services
.adaptation) on a TUNING set, not on the reported prompts: bench/data/classification.jsonl
(72 prompts, 6 categories, a different labelled set from bench/data/routing.jsonl).

Each of 10 seeded random halvings: the adaptation is fitted on one half's prompts
WITHOUT labels and scored on the other half, and the other way round; bare labels and
descriptions. Ranks the grid by the sum of the two accuracies.

    .venv/bin/python bench/adaptation_tuning.py

Writes bench/results/adaptation_tuning.txt.
"""

import itertools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402

from routing.classifiers.base import Category  # noqa: E402
from routing.classifiers.embedding import EmbeddingClassifier  # noqa: E402
from routing.services.adaptation import ROUNDS, TEMPERATURE, WEIGHT, Adaptation, adapt_fit  # noqa: E402

DATA = ROOT / "bench" / "data"
OUT = ROOT / "bench" / "results" / "adaptation_tuning.txt"
REPEATS = 10


def main() -> None:
    rows = [json.loads(line) for line in (DATA / "classification.jsonl").open()]
    described = json.loads((DATA / "classification_categories.json").read_text())
    labels = list(described)
    y = np.array([labels.index(r["label"]) for r in rows])
    texts = [r["prompt"] for r in rows]
    classifier = EmbeddingClassifier()
    embedded = classifier.example_vectors(texts)
    sims = {
        "bare": classifier.similarities(
            texts, [Category(lab) for lab in labels], embedded=embedded
        ),
        "descriptions": classifier.similarities(
            texts, [Category(lab, described[lab]) for lab in labels], embedded=embedded
        ),
    }
    halvings = []
    for seed in range(REPEATS):
        order = np.random.default_rng(seed).permutation(len(rows))
        half = len(order) // 2
        halvings += [(order[:half], order[half:]), (order[half:], order[:half])]

    def accuracy(zero_shot, weight, temperature, rounds):
        hits = 0
        for pool, scored in halvings:
            prototypes, center = adapt_fit(
                zero_shot[pool],
                embedded[pool],
                weight=weight,
                temperature=temperature,
                rounds=rounds,
            )
            adaptation = Adaptation(tuple(labels), prototypes, center, weight)
            adjusted = adaptation.adjust(zero_shot[scored], embedded[scored], labels)
            hits += int((adjusted.argmax(axis=1) == y[scored]).sum())
        return hits / (len(rows) * REPEATS)

    lines = [
        "# Traffic adaptation tuning (bench/adaptation_tuning.py), bench/data/classification.jsonl",
        f"{REPEATS} seeded halvings x 2: fitted on one half's prompts without labels, scored on "
        "the other half",
        "zero-shot (no adaptation): bare labels "
        f"{(sims['bare'].argmax(1) == y).mean():.1%}, descriptions "
        f"{(sims['descriptions'].argmax(1) == y).mean():.1%}",
        "weight temperature rounds | bare labels | descriptions",
    ]
    results = []
    for weight, temperature, rounds in itertools.product(
        (0.25, 0.5, 0.75, 1.0, 1.5), (0.02, 0.03, 0.05, 0.1), (1, 3, 5, 10)
    ):
        bare = accuracy(sims["bare"], weight, temperature, rounds)
        desc = accuracy(sims["descriptions"], weight, temperature, rounds)
        results.append((bare + desc, weight, temperature, rounds, bare, desc))
    results.sort(key=lambda r: -r[0])
    for _, weight, temperature, rounds, bare, desc in results[:15]:
        lines.append(f"  {weight:<6g} {temperature:<11g} {rounds:<6d} | {bare:.1%} | {desc:.1%}")
    lines.append(
        f"chosen (routing.services.adaptation): weight {WEIGHT}, temperature {TEMPERATURE}, "
        f"rounds {ROUNDS}"
    )
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
