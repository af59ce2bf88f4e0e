"""Evaluate the router on labelled prompts: accuracy, confusion, calibration, latency."""

import statistics
from dataclasses import dataclass

import numpy as np

from routing.classifiers.base import Category
from routing.services.classification import _classify, _resolve


@dataclass
class Evaluation:
    labels: list[str]
    total: int
    correct: int
    confusion: list[list[int]]  # truth x predicted, in `labels` order
    ece: float
    p50_ms: float
    engine: str
    failures: list[tuple[str, str, str, float]]  # (prompt, truth, predicted, confidence)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def table(self) -> str:
        width = max(8, *(len(label) for label in self.labels)) + 1
        lines = [
            "truth \\ predicted".ljust(width) + "".join(lab[:7].rjust(8) for lab in self.labels)
        ]
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(label.ljust(width) + "".join(str(n).rjust(8) for n in row))
        return "\n".join(lines)


def expected_calibration_error(confidences, hits, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidences, hits = np.asarray(confidences, float), np.asarray(hits, float)
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidences > low) & (confidences <= high)
        if mask.any():
            error += mask.mean() * abs(hits[mask].mean() - confidences[mask].mean())
    return float(error)


def router_evaluate(
    rows: list[dict], categories: list[Category] | None = None, *, use_head: bool = True
) -> Evaluation:
    """Classify every {"prompt", "label"} row one by one (as the API does) against
    `categories` (default: the routing table, with its trained head)."""
    categories, head = _resolve(categories)
    if not use_head:
        head = None
    labels = [c.label for c in categories]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise ValueError(f"labels not among the categories ({', '.join(labels)}): {unknown}")
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    confidences, hits, times, failures = [], [], [], []
    engine = ""
    for row in rows:
        result, engine, ms = _classify(row["prompt"], categories, False, head)
        top, confidence = result.ranked()[0]
        confusion[index[row["label"]], index[top]] += 1
        confidences.append(confidence)
        hits.append(top == row["label"])
        times.append(ms)
        if top != row["label"]:
            failures.append((row["prompt"], row["label"], top, confidence))
    return Evaluation(
        labels=labels,
        total=len(rows),
        correct=int(sum(hits)),
        confusion=confusion.tolist(),
        ece=expected_calibration_error(confidences, hits),
        p50_ms=statistics.median(times) if times else 0.0,
        engine=engine,
        failures=failures,
    )
