"""The trained router: a softmax-regression head over the classifier's prompt embeddings,
fitted on every example utterance (staff, corrections, imports) of the routing table.

`router_train` measures it first with stratified k-fold cross-validation against the
zero-shot classifier (descriptions + the training folds' examples) on the same folds,
then fits it on everything and stores it as a new RouterHead version. It is active,
i.e. used by every process (routing.signals invalidates their routing tables), only
when its cross-validated accuracy beats zero-shot, unless staff force it.
"""

import random
from dataclasses import dataclass, field

import numpy as np
from django.db import transaction

from routing.classifiers import get_classifier
from routing.classifiers.base import Category
from routing.models import RouterHead
from routing.services.routes import routing_table
from tokenflow_site.errors import ApiError

L2 = 1e-5  # weak weight decay: stronger decay leaves the probabilities near uniform (ECE)
SEED = 0


def fit_head(x: np.ndarray, y: np.ndarray, classes: int, *, l2: float = L2):
    """Multinomial logistic regression (L-BFGS, deterministic) -> (weights, bias)."""
    import torch

    features = torch.as_tensor(x, dtype=torch.float32)
    targets = torch.as_tensor(y, dtype=torch.long)
    weights = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, bias], lr=1, max_iter=300, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        logits = features @ weights.T + bias
        loss = torch.nn.functional.cross_entropy(logits, targets) + l2 * (weights**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weights.detach().numpy().astype(np.float32), bias.detach().numpy().astype(np.float32)


def stratified_folds(y: np.ndarray, k: int, seed: int = SEED) -> list[np.ndarray]:
    """k test-index arrays; each class is dealt round-robin after a seeded shuffle."""
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in sorted(set(y.tolist())):
        members = [i for i in range(len(y)) if y[i] == label]
        rng.shuffle(members)
        for position, index in enumerate(members):
            folds[position % k].append(index)
    return [np.array(sorted(fold)) for fold in folds]


@dataclass
class TrainingResult:
    labels: list[str]
    examples: int
    folds: int
    cv_accuracy: float
    zero_shot_accuracy: float
    fold_accuracies: list[tuple[float, float]] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def beats_zero_shot(self) -> bool:
        return self.cv_accuracy > self.zero_shot_accuracy


def cross_validate(
    classifier, categories: list[Category], texts: list[str], y: np.ndarray, folds: int
) -> TrainingResult:
    """Head vs zero-shot (descriptions + the training folds' examples), same folds."""
    labels = [c.label for c in categories]
    vectors = classifier.example_vectors(texts)
    head_hits = zero_hits = 0
    fold_accuracies = []
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    for test in stratified_folds(y, folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        weights, bias = fit_head(vectors[train], y[train], len(labels))
        predicted = (vectors[test] @ weights.T + bias).argmax(axis=1)
        fold_categories = [
            Category(c.label, c.description, tuple(texts[i] for i in train if y[i] == index))
            for index, c in enumerate(categories)
        ]
        sims = classifier.similarities(
            [texts[i] for i in test], fold_categories, embedded=vectors[test]
        )
        zero = sims.argmax(axis=1)
        hits, zero_fold = int((predicted == y[test]).sum()), int((zero == y[test]).sum())
        head_hits, zero_hits = head_hits + hits, zero_hits + zero_fold
        fold_accuracies.append((hits / len(test), zero_fold / len(test)))
        for truth, guess in zip(y[test], predicted, strict=True):
            confusion[truth, guess] += 1
    return TrainingResult(
        labels=labels,
        examples=len(y),
        folds=folds,
        cv_accuracy=head_hits / len(y),
        zero_shot_accuracy=zero_hits / len(y),
        fold_accuracies=fold_accuracies,
        confusion=confusion.tolist(),
    )


def training_data() -> tuple[list[Category], list[str], np.ndarray]:
    """The routing table's categories that have at least 2 examples, and their examples."""
    table = routing_table()
    categories = [c for c in table.categories if len(c.examples) >= 2]
    texts, y = [], []
    for index, category in enumerate(categories):
        texts += list(category.examples)
        y += [index] * len(category.examples)
    return categories, texts, np.array(y, dtype=int)


def router_train(
    *, folds: int = 5, force: bool = False, user=None
) -> tuple[RouterHead, TrainingResult]:
    """Cross-validate, fit on all examples, store a new RouterHead version; it becomes the
    active head if it beats zero-shot on the same folds (or `force`)."""
    classifier = get_classifier()
    if not getattr(classifier, "supports_head", False):
        raise ApiError(
            f"The classifier {classifier.engine_name!r} cannot use a trained head.",
            code="unsupported_classifier",
            status=400,
        )
    categories, texts, y = training_data()
    if len(categories) < 2:
        raise ApiError(
            "Training needs at least 2 enabled categories with 2 or more examples each "
            f"(found {len(categories)}); add examples or corrections first.",
            code="not_enough_examples",
            status=400,
        )
    smallest = int(np.bincount(y).min())
    folds = max(2, min(folds, smallest))
    result = cross_validate(classifier, categories, texts, y, folds)
    result.weights, result.bias = fit_head(classifier.example_vectors(texts), y, len(categories))
    active = force or result.beats_zero_shot
    with transaction.atomic():
        if active:
            RouterHead.objects.filter(active=True).update(active=False)
        head = RouterHead.objects.create(
            engine=classifier.engine_name,
            labels=result.labels,
            weights=result.weights.astype(np.float32).tobytes(),
            bias=[float(b) for b in result.bias],
            dim=int(result.weights.shape[1]),
            examples=result.examples,
            folds=result.folds,
            cv_accuracy=result.cv_accuracy,
            zero_shot_accuracy=result.zero_shot_accuracy,
            active=active,
            created_by=user,
            report={
                "fold_accuracies": result.fold_accuracies,
                "confusion": result.confusion,
                "per_label": {c.label: len(c.examples) for c in categories},
                "forced": bool(force and not result.beats_zero_shot),
                "l2": L2,
            },
        )
    return head, result
