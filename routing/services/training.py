"""The trained router, fitted on every example utterance (staff, corrections, imports)
of the routing table: by default MiniLM's top layers fine-tuned SetFit-style on the
examples and each category's description, scored by nearest prototype + nearest example
(routing.classifiers.finetune); or (kind "linear") a softmax-regression head over the
frozen prompt embeddings.

`router_train` measures it first with stratified k-fold cross-validation against the
zero-shot classifier (descriptions + the training folds' examples) on the same folds
(the fine-tuned folds may use fewer rounds, to bound the time), then fits it on
everything and stores it as a new RouterHead version. It is active, i.e. used by every
process (routing.signals invalidates their routing tables), only when its
cross-validated accuracy beats zero-shot, unless staff force it.
"""

import random
import time
from dataclasses import dataclass, field

import numpy as np
from django.db import transaction

from routing.classifiers import classifier_with_head
from routing.classifiers.base import Category
from routing.models import RouterHead
from routing.services.routes import routing_table
from tokenflow_site.errors import ApiError

KINDS = ("finetuned", "linear")
TOP_LAYERS = 3  # of 6: bench/results/router_tuning.txt (tuned on bench/data/classification.jsonl)
ROUNDS = 6
CV_ROUNDS = 2  # per fold, to bound the time (bench/results/classification_learning.txt)
LEARNING_RATE = 1e-4  # AdamW; tuned with TOP_LAYERS on the same tuning set
MAX_ROUNDS = 20
DEFAULT_TEMPERATURE = 0.05  # when none was fitted on CV folds (benchmarks)
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
    kind: str = "linear"
    cv_seconds: float = 0.0
    fit_seconds: float = 0.0
    head: object = None  # the fine-tuned router (routing.classifiers.finetune.FinetunedHead)

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


def anchor_text(category: Category) -> str:
    """The category's description (or humanised label), one more training text."""
    return category.description.strip() or category.label.replace("-", " ").replace("_", " ")


def _fold_zero_shot(classifier, categories, texts, y, train, test, vectors) -> np.ndarray:
    fold_categories = [
        Category(c.label, c.description, tuple(texts[i] for i in train if y[i] == index))
        for index, c in enumerate(categories)
    ]
    sims = classifier.similarities(
        [texts[i] for i in test], fold_categories, embedded=vectors[test]
    )
    return sims.argmax(axis=1)


def finetune_fit(classifier, bottoms, y: np.ndarray, classes: int, *, start, rounds, seed):
    """Fine-tuned layers on `bottoms` -> (layers, training vectors, prototypes)."""
    from routing.classifiers.finetune import embed_with, prototypes, setfit_layers

    model = classifier._model
    layers = setfit_layers(
        model, bottoms, y.tolist(), start=start, rounds=rounds, seed=seed, lr=LEARNING_RATE
    )
    vectors = embed_with(model, layers, bottoms)
    return layers, vectors, prototypes(vectors, y, classes)


def finetune_head(
    classifier,
    categories: list[Category],
    texts: list[str],
    y: np.ndarray,
    *,
    top_layers: int = TOP_LAYERS,
    rounds: int = ROUNDS,
    seed: int = SEED,
    temperature: float = DEFAULT_TEMPERATURE,
    bottoms=None,
):
    """The fine-tuned router (FinetunedHead) on every example + each category's
    description (`bottoms`: their precomputed bottom states, texts then descriptions)."""
    from routing.classifiers.finetune import FinetunedHead, bottom_states, layers_state, split_point

    classifier.load()
    model = classifier._model
    start = split_point(model, top_layers)
    anchors = [anchor_text(c) for c in categories]
    if bottoms is None:
        with classifier._run_lock:
            bottoms = bottom_states(model, classifier._tokenizer, texts + anchors, start)
    all_y = np.concatenate([y, np.arange(len(categories))])
    layers, vectors, protos = finetune_fit(
        classifier, bottoms, all_y, len(categories), start=start, rounds=rounds, seed=seed
    )
    return FinetunedHead(
        [c.label for c in categories],
        top_layers=len(model.encoder.layer) - start,
        state={k[len("layer.") :]: v for k, v in layers_state(layers).items()},
        prototypes=protos,
        examples=vectors,
        example_labels=all_y,
        temperature=temperature,
    )


def finetune_train(
    classifier,
    categories: list[Category],
    texts: list[str],
    y: np.ndarray,
    folds: int,
    *,
    top_layers: int = TOP_LAYERS,
    rounds: int = ROUNDS,
    cv_rounds: int = CV_ROUNDS,
    seed: int = SEED,
) -> TrainingResult:
    """Cross-validate the fine-tuned router (`cv_rounds`) against zero-shot on the same
    folds, fit the softmax temperature on the out-of-fold scores, then fine-tune on every
    example + description (`rounds`): result.head is the FinetunedHead."""
    from routing.classifiers.finetune import (
        bottom_states,
        embed_with,
        fit_temperature,
        router_sims,
        split_point,
    )

    classifier.load()
    model = classifier._model
    labels = [c.label for c in categories]
    start = split_point(model, top_layers)
    anchors = [anchor_text(c) for c in categories]
    anchor_y = np.arange(len(categories))
    with classifier._run_lock:
        bottoms = bottom_states(model, classifier._tokenizer, texts + anchors, start)
    anchor_rows = list(range(len(texts), len(texts) + len(anchors)))
    vectors = classifier.example_vectors(texts)
    started = time.perf_counter()
    head_hits = zero_hits = 0
    fold_accuracies = []
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    out_of_fold = np.zeros((len(y), len(labels)))
    for test in stratified_folds(y, folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        rows = list(train) + anchor_rows
        fit_y = np.concatenate([y[train], anchor_y])
        layers, fit_vectors, protos = finetune_fit(
            classifier,
            [bottoms[i] for i in rows],
            fit_y,
            len(labels),
            start=start,
            rounds=cv_rounds,
            seed=seed,
        )
        test_vectors = embed_with(model, layers, [bottoms[i] for i in test])
        sims = router_sims(test_vectors, protos, fit_vectors, fit_y)
        out_of_fold[test] = sims
        predicted = sims.argmax(axis=1)
        zero = _fold_zero_shot(classifier, categories, texts, y, train, test, vectors)
        hits, zero_fold = int((predicted == y[test]).sum()), int((zero == y[test]).sum())
        head_hits, zero_hits = head_hits + hits, zero_hits + zero_fold
        fold_accuracies.append((hits / len(test), zero_fold / len(test)))
        for truth, guess in zip(y[test], predicted, strict=True):
            confusion[truth, guess] += 1
    cv_seconds = time.perf_counter() - started
    started = time.perf_counter()
    head = finetune_head(
        classifier,
        categories,
        texts,
        y,
        top_layers=top_layers,
        rounds=rounds,
        seed=seed,
        temperature=fit_temperature(out_of_fold, y),
        bottoms=bottoms,
    )
    return TrainingResult(
        labels=labels,
        examples=len(y),
        folds=folds,
        cv_accuracy=head_hits / len(y),
        zero_shot_accuracy=zero_hits / len(y),
        fold_accuracies=fold_accuracies,
        confusion=confusion.tolist(),
        weights=head.prototypes,
        kind="finetuned",
        cv_seconds=cv_seconds,
        fit_seconds=time.perf_counter() - started,
        head=head,
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


def training_options_check(kind: str, top_layers: int, rounds: int, cv_rounds: int) -> None:
    if kind not in KINDS:
        raise ApiError(f"kind must be one of {', '.join(KINDS)}.", code="invalid", status=400)
    if not 1 <= top_layers <= 24:
        raise ApiError("top_layers must be between 1 and 24.", code="invalid", status=400)
    for name, value in (("rounds", rounds), ("cv_rounds", cv_rounds)):
        if not 1 <= value <= MAX_ROUNDS:
            raise ApiError(
                f"{name} must be between 1 and {MAX_ROUNDS}.", code="invalid", status=400
            )


def router_train(
    *,
    folds: int = 5,
    force: bool = False,
    user=None,
    kind: str = "finetuned",
    top_layers: int = TOP_LAYERS,
    rounds: int = ROUNDS,
    cv_rounds: int = CV_ROUNDS,
) -> tuple[RouterHead, TrainingResult]:
    """Cross-validate, fit on all examples, store a new RouterHead version; it becomes the
    active head if it beats zero-shot on the same folds (or `force`). Nothing is stored
    on bad options or too few examples (ApiError 400)."""
    training_options_check(kind, top_layers, rounds, cv_rounds)
    classifier = classifier_with_head("use a trained head")
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
    extra = {}
    if kind == "finetuned":
        classifier.load()
        available = len(classifier._model.encoder.layer)
        if top_layers > available:
            raise ApiError(
                f"top_layers must be at most {available} (the model's layers).",
                code="invalid",
                status=400,
            )
        result = finetune_train(
            classifier,
            categories,
            texts,
            y,
            folds,
            top_layers=top_layers,
            rounds=rounds,
            cv_rounds=cv_rounds,
        )
        result.bias = np.zeros(len(categories), dtype=np.float32)
        extra = {
            "kind": RouterHead.Kind.FINETUNED,
            "top_layers": result.head.top_layers,
            "layers": result.head.to_blob(),
            "temperature": result.head.temperature,
        }
    else:
        started = time.perf_counter()
        result = cross_validate(classifier, categories, texts, y, folds)
        result.cv_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result.weights, result.bias = fit_head(
            classifier.example_vectors(texts), y, len(categories)
        )
        result.fit_seconds = time.perf_counter() - started
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
            **extra,
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
                "l2": L2 if kind == "linear" else None,
                "rounds": rounds if kind == "finetuned" else None,
                "cv_rounds": cv_rounds if kind == "finetuned" else None,
                "lr": LEARNING_RATE if kind == "finetuned" else None,
                "cv_seconds": round(result.cv_seconds, 1),
                "fit_seconds": round(result.fit_seconds, 1),
            },
        )
    return head, result
