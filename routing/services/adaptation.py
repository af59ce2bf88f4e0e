"""Adapt the router to its traffic without labels (self-training on recent prompts).

Every classified prompt is persisted (Classification -> Prompt). `router_adapt` takes the
recent single-label ones, scores them zero-shot against a label set (the routing table's,
and each label set frequent in the traffic), and learns one prototype per category from
them with no label at all: the prompts' zero-shot probabilities (softmax, temperature
TEMPERATURE) weight their centred embeddings into prototypes, the prototype cosine is
added to the zero-shot score, and the probabilities are recomputed, ROUNDS times (a soft
EM / self-training loop). Centring on the traffic's mean embedding removes what every
prompt shares (MiniLM's embeddings sit in a narrow cone), so the cosines compare what
distinguishes the categories.

At classification time (single-label, the embedding classifier) the score of category c
becomes (zero-shot + WEIGHT * cos(prompt - mean, prototype_c)) / (1 + WEIGHT), when every
requested label was adapted (routing.services.routes.RoutingTable.adaptation_for);
otherwise zero-shot is unchanged. bench/classification.py --learning measures it on
held-out prompts that were not in the adaptation pool: bare labels 69.9% -> 83.5%,
descriptions 73.5% -> 89.5% (seeds 0-4; bench/results/classification_learning.txt); WEIGHT,
TEMPERATURE and ROUNDS were picked on a different labelled set,
bench/data/classification.jsonl (bench/adaptation_tuning.py).
"""

from collections import Counter
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routing.classifiers import classifier_with_head
from routing.classifiers.base import Category
from routing.models import Classification, RouterAdaptation
from tokenflow_site.errors import ApiError

WEIGHT = 0.75
TEMPERATURE = 0.1
ROUNDS = 3
MIN_PROMPTS = 60  # bench: 30 prompts gain about half as much as 105
LIMIT = 5000  # most recent classifications
MAX_SETS = 5  # label sets adapted besides the routing table's


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-9)


def _softmax(values: np.ndarray, temperature: float) -> np.ndarray:
    scaled = values / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def adapt_fit(
    zero_shot: np.ndarray,
    embedded: np.ndarray,
    *,
    weight: float = WEIGHT,
    temperature: float = TEMPERATURE,
    rounds: int = ROUNDS,
) -> tuple[np.ndarray, np.ndarray]:
    """(prototypes: categories x dim, center: dim) from unlabelled prompts' zero-shot
    similarities (prompts x categories) and embeddings (prompts x dim)."""
    center = embedded.mean(axis=0)
    centred = _normalise(embedded - center)
    scores = zero_shot
    prototypes = np.zeros((zero_shot.shape[1], embedded.shape[1]), dtype=np.float32)
    for _ in range(rounds):
        posterior = _softmax(scores, temperature)
        prototypes = _normalise(posterior.T @ centred).astype(np.float32)
        scores = zero_shot + weight * (centred @ prototypes.T)
    return prototypes, center.astype(np.float32)


@dataclass(frozen=True)
class Adaptation:
    """A RouterAdaptation row, ready to score: `adjust` blends its prototype cosines into
    the zero-shot similarities of the categories it covers."""

    labels: tuple[str, ...]
    prototypes: np.ndarray
    center: np.ndarray
    weight: float
    version: int | None = None
    engine: str = ""

    def covers(self, labels: list[str]) -> bool:
        known = {label.casefold() for label in self.labels}
        return len(labels) >= 2 and all(label.casefold() in known for label in labels)

    def adjust(self, sims: np.ndarray, embedded: np.ndarray, labels: list[str]) -> np.ndarray:
        index = {label.casefold(): i for i, label in enumerate(self.labels)}
        rows = self.prototypes[[index[label.casefold()] for label in labels]]
        cosines = _normalise(embedded - self.center) @ rows.T
        return (sims + self.weight * cosines) / (1 + self.weight)

    @classmethod
    def from_row(cls, row: RouterAdaptation) -> "Adaptation":
        prototypes = np.frombuffer(bytes(row.prototypes), dtype=np.float32)
        return cls(
            labels=tuple(row.labels),
            prototypes=prototypes.reshape(len(row.labels), row.dim),
            center=np.frombuffer(bytes(row.center), dtype=np.float32),
            weight=row.weight,
            version=row.pk,
            engine=row.engine,
        )


def _label_key(labels) -> frozenset:
    return frozenset(label.casefold() for label in labels)


def _traffic(limit: int) -> list[dict]:
    rows = (
        Classification.objects.filter(multi_label=False, prompt__isnull=False)
        .order_by("-created_at", "-pk")
        .values("prompt__text", "categories", "feedback_category")[:limit]
    )
    return list(rows)


def _label_sets(table, rows: list[dict], min_prompts: int) -> list[tuple[list[Category], list]]:
    """(categories, their traffic rows): the routing table's set with every recent prompt
    (off-topic prompts do not hurt: bench), then the label sets frequent in the traffic
    with the prompts classified against them."""
    sets = []
    if len(table.categories) >= 2:
        sets.append((list(table.categories), rows))
    seen = {_label_key(c.label for c in table.categories)}
    grouped: dict[frozenset, list[dict]] = {}
    for row in rows:
        labels = [record["category"] for record in row["categories"]]
        if len(labels) >= 2:
            grouped.setdefault(_label_key(labels), []).append(row)
    frequent = sorted(grouped.items(), key=lambda item: -len(item[1]))
    for key, members in frequent:
        if key in seen or len(members) < min_prompts or len(sets) > MAX_SETS:
            continue
        seen.add(key)
        records = members[0]["categories"]
        requested = [Category(r["category"], r.get("description", "")) for r in records]
        categories = table.expand(requested)
        sets.append((categories, members))
    return sets


def router_adapt(
    *,
    limit: int = LIMIT,
    min_prompts: int = MIN_PROMPTS,
    rounds: int = ROUNDS,
    user=None,
) -> list[RouterAdaptation]:
    """Fit and store one RouterAdaptation per label set with at least `min_prompts`
    distinct recent prompts (the previous active one of the same set is deactivated); 400
    (nothing stored) when no label set has enough."""
    from routing.services.routes import routing_table

    if limit < 1 or min_prompts < 2 or not 1 <= rounds <= 50:
        raise ApiError(
            "limit must be >= 1, min_prompts >= 2 and rounds between 1 and 50.",
            code="invalid",
            status=400,
        )
    classifier = classifier_with_head("be adapted")
    table = routing_table()
    rows = _traffic(limit)
    fitted = []
    for categories, members in _label_sets(table, rows, min_prompts):
        texts = list(dict.fromkeys(row["prompt__text"] for row in members if row["prompt__text"]))
        if len(texts) < min_prompts:
            continue
        embedded, _ = classifier.embed_counted(texts)
        zero_shot = classifier.similarities(texts, categories, embedded=embedded)
        prototypes, center = adapt_fit(zero_shot, embedded, rounds=rounds)
        labels = [c.label for c in categories]
        adaptation = Adaptation(tuple(labels), prototypes, center, WEIGHT)
        before = zero_shot.argmax(axis=1)
        after = adaptation.adjust(zero_shot, embedded, labels).argmax(axis=1)
        fitted.append((categories, texts, prototypes, center, before, after, members))
    if not fitted:
        raise ApiError(
            f"Adapting needs at least {min_prompts} distinct recent single-label prompts "
            f"classified against one label set of 2 or more categories (found {len(rows)} "
            "recent classifications).",
            code="not_enough_prompts",
            status=400,
        )
    stored = []
    with transaction.atomic():
        for categories, texts, prototypes, center, before, after, members in fitted:
            labels = [c.label for c in categories]
            key = _label_key(labels)
            stale = [
                row.pk
                for row in RouterAdaptation.objects.filter(active=True).only("labels")
                if _label_key(row.labels) == key
            ]
            RouterAdaptation.objects.filter(pk__in=stale).update(active=False)
            stored.append(
                RouterAdaptation.objects.create(
                    engine=classifier.engine_name,
                    labels=labels,
                    categories=[
                        {
                            "category": c.label,
                            "description": c.description,
                            "examples": len(c.examples),
                        }
                        for c in categories
                    ],
                    prototypes=prototypes.tobytes(),
                    center=center.tobytes(),
                    dim=int(prototypes.shape[1]),
                    weight=WEIGHT,
                    rounds=rounds,
                    prompts=len(texts),
                    active=True,
                    created_by=user,
                    report=_report(labels, texts, before, after, members),
                )
            )
    return stored


def _report(labels, texts, before, after, members) -> dict:
    """What changed: the pseudo-label counts, how many prompts changed category, and, on
    the prompts staff or keys corrected (their labels were NOT used), the accuracy before
    and after (in-sample: those prompts were in the unlabelled pool)."""
    corrected = {}
    for row in members:
        if row["feedback_category"] in labels and row["prompt__text"] not in corrected:
            corrected[row["prompt__text"]] = labels.index(row["feedback_category"])
    position = {text: i for i, text in enumerate(texts)}
    report = {
        "zero_shot_counts": dict(Counter(labels[i] for i in before)),
        "adapted_counts": dict(Counter(labels[i] for i in after)),
        "changed": int((before != after).sum()),
        "corrected_prompts": len(corrected),
    }
    if corrected:
        index = [position[text] for text in corrected if text in position]
        truth = np.array([corrected[texts[i]] for i in index])
        report["corrected_accuracy_zero_shot"] = float((before[index] == truth).mean())
        report["corrected_accuracy_adapted"] = float((after[index] == truth).mean())
    return report


def router_adapt_due(now=None) -> list[RouterAdaptation]:
    """`router_adapt` when the last adaptation (or attempt) is TOKENFLOW_ROUTER_ADAPT_SECONDS
    old: the sweeper (`sweep_generations --every`, run by `make serve`) keeps the router
    adapted to recent traffic with nobody running `adapt_router`. Not enough traffic yet:
    nothing stored, tried again after that interval. 0 = never."""
    every = settings.TOKENFLOW_ROUTER_ADAPT_SECONDS
    if every <= 0:
        return []
    now = now or timezone.now()
    last = RouterAdaptation.objects.order_by("-created_at").values_list("created_at", flat=True)
    latest = max(filter(None, [last.first(), _adapt_tried.get("at")]), default=None)
    if latest is not None and (now - latest).total_seconds() < every:
        return []
    _adapt_tried["at"] = now
    try:
        return router_adapt()
    except ApiError:  # not enough traffic (or a classifier that cannot be adapted)
        return []


_adapt_tried: dict = {}  # this process's last attempt (the sweeper loop)
