"""Embedding-similarity zero-shot classifier (default, offline): all-MiniLM-L6-v2.

The prompt and each category are mean-pooled, L2-normalised MiniLM embeddings. A
category with a description is embedded as "label: description" AND as each clause of
the description; its similarity is the mean of the whole-text cosine and the best
clause's (a long description dilutes a short prompt's match; bench/classification.py:
72% -> 86% accuracy). A category with example utterances also gets the cosine with the
examples' prototype (their normalised mean) and with its nearest example; the three are
averaged (bench/classification.py: 75% -> 84-89% with 5 examples per category). The
prompt is still embedded once. Similarities become calibrated scores: a softmax with a
temperature (single-label, sums to 1) or an independent sigmoid around a threshold
(multi-label). A trained RouterHead (routing.services.training) replaces the scores of
the categories it was trained on (single-label only): a LinearHead on the embedding, or a
fine-tuned router (routing.classifiers.finetune) whose stored top layers run on the same
bottom hidden states as the base model's. A traffic adaptation (routing.services
.adaptation: prototypes learnt from recent prompts without labels) is blended into the
zero-shot similarities of a single-label call whose labels it covers.
"""

import re
import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
from django.conf import settings

from routing.classifiers.base import Category, Classifier, ClassifierResult
from routing.classifiers.cache import routes_version

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token windows
CACHE_SIZE = 4096
EXAMPLE_CACHE_SIZE = 8192


def category_text(category: Category) -> str:
    """What a category is embedded as: its humanised label, plus its description."""
    label = category.label.replace("-", " ").replace("_", " ").strip()
    return f"{label}: {category.description.strip()}" if category.description.strip() else label


CLAUSE_RE = re.compile(r"[,;:.]|\be\.g\b| or | and ")


def category_texts(category: Category) -> list[str]:
    """The whole category text first, then the description's clauses (may be none)."""
    whole = category_text(category)
    clauses = [c.strip() for c in CLAUSE_RE.split(category.description) if len(c.strip()) > 2]
    return list(dict.fromkeys([whole, *clauses]))


def softmax(values: np.ndarray, temperature: float) -> np.ndarray:
    scaled = values / temperature
    scaled -= scaled.max()
    exp = np.exp(scaled)
    return exp / exp.sum()


def sigmoid(values: np.ndarray, threshold: float, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(values - threshold) / temperature))


class EmbeddingClassifier(Classifier):
    engine = "embedding"
    supports_head = True

    def __init__(self, *, model: str = "") -> None:
        super().__init__(model=model)
        self._load_lock = threading.Lock()
        # Fast tokenizers are not safe for concurrent calls; inference is serialised too
        # (2 cores: parallel forward passes would only fight for them).
        self._run_lock = threading.Lock()
        self._pending: list[tuple[str, Future]] = []
        self._pending_lock = threading.Lock()
        self._tokenizer = None
        self._model = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_version: str | None = None
        self._cache_lock = threading.Lock()
        # Example embeddings are keyed by text and never go stale, so a routing-table
        # change (every correction is one) does not re-embed every example: LRU only.
        self._examples: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def model_name(self) -> str:
        return self.model or "all-MiniLM-L6-v2"

    @property
    def engine_name(self) -> str:
        return f"embedding:{self.model_name.rstrip('/').rsplit('/', 1)[-1]}"

    def load(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            # torch/transformers are heavy: imported on first use, not at Django start-up.
            import torch
            from transformers import AutoModel, AutoTokenizer

            from tokenflow_site.assets import minilm_path

            path = self.model or str(minilm_path())
            if settings.TOKENFLOW_CLASSIFIER_THREADS > 0:
                torch.set_num_threads(settings.TOKENFLOW_CLASSIFIER_THREADS)
            tokenizer = AutoTokenizer.from_pretrained(path)
            # fp32: on this CPU bf16 MiniLM is ~3x slower (bench/classification.py).
            model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
            self._tokenizer = tokenizer
            self._model = model

    def token_count(self, text: str) -> int:
        """`text`'s MiniLM tokens (with [CLS] and [SEP]), untruncated."""
        self.load()
        with self._run_lock:
            return len(self._tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings, one row per text."""
        self.load()
        with self._run_lock:
            return self._forward(texts)

    def embed_counted(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(embeddings, tokens embedded) for many texts, `batch_size` per forward pass
        (bounded padding memory); texts beyond 256 tokens are truncated, as in training."""
        self.load()
        rows, tokens = [], 0
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            with self._run_lock:
                encoded = self._tokenizer(batch, truncation=True, max_length=MAX_TOKENS)
                tokens += sum(len(ids) for ids in encoded["input_ids"])
                rows.append(self._forward(batch))
        return np.concatenate(rows), tokens

    def _forward(self, texts: list[str], head=None, base: bool = True):
        """Embeddings; with a fine-tuned head, (embeddings, router embeddings): the bottom
        layers run once, then the base top layers and the head's (routing.classifiers
        .finetune). `base=False` skips the base top layers: (None, router embeddings)."""
        import torch

        with torch.inference_mode():
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            if head is not None and not base:
                from routing.classifiers.finetune import bottom_forward, run_top

                start, layers = head.layers_for(self._model)
                bottom = bottom_forward(self._model, batch, start)
                return None, run_top(self._model, layers, bottom, batch["attention_mask"]).numpy()
            out = self._model(**batch, output_hidden_states=head is not None)
            hidden = out.last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
            if head is None:
                return pooled
            from routing.classifiers.finetune import run_top

            start, layers = head.layers_for(self._model)
            routed = run_top(self._model, layers, out.hidden_states[start], batch["attention_mask"])
        return pooled, routed.numpy()

    def embed_prompt(self, text: str, head=None, base: bool = True):
        """One prompt's embedding, batched with the prompts of concurrent requests.

        No timer and no thread: a caller queues its prompt, then whoever holds the model
        lock runs every queued prompt (up to TOKENFLOW_CLASSIFIER_MAX_BATCH) in one
        forward pass; callers whose prompt was in it just take their row. Prompts pile
        up exactly while the model is busy, so batching costs an idle server nothing.
        With a fine-tuned `head`, returns (embedding or None if not `base`, router
        embedding); a batch holds the prompts of one (head, base) only.
        """
        self.load()
        future: Future = Future()
        mode = None if head is None else (head, base)
        with self._pending_lock:
            self._pending.append((text, mode, future))
        limit = max(1, settings.TOKENFLOW_CLASSIFIER_MAX_BATCH)
        while not future.done():
            with self._run_lock:
                if future.done():
                    break
                with self._pending_lock:
                    if not self._pending:
                        continue
                    first = self._pending[0][1]
                    batch = [p for p in self._pending if p[1] == first][:limit]
                    taken = {id(p) for p in batch}
                    self._pending = [p for p in self._pending if id(p) not in taken]
                try:
                    texts = [queued for queued, _, _ in batch]
                    vectors = (
                        self._forward(texts) if first is None else self._forward(texts, *first)
                    )
                except Exception as exc:  # every caller in the batch gets it
                    for _, _, waiting in batch:
                        waiting.set_exception(exc)
                    continue
                if first is None:
                    for (_, _, waiting), vector in zip(batch, vectors, strict=True):
                        waiting.set_result(vector)
                else:
                    pooled_rows = vectors[0] if vectors[0] is not None else [None] * len(batch)
                    for (_, _, waiting), pooled, routed in zip(
                        batch, pooled_rows, vectors[1], strict=True
                    ):
                        waiting.set_result((pooled, routed))
        return future.result()

    def _cached(self, texts: list[str]) -> list[np.ndarray]:
        """Embeddings of category texts, computed once (dropped when the routing table
        changes, in any process: see routing.classifiers.cache)."""
        with self._cache_lock:
            return self._cached_locked(texts)

    def _cached_locked(self, texts: list[str]) -> list[np.ndarray]:
        version = routes_version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self._cache[text] = vector
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return rows

    def example_vectors(self, texts: list[str]) -> np.ndarray:
        """Embeddings of example utterances (LRU by text, not dropped on table changes)."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._examples))
            for start in range(0, len(missing), 64):
                chunk = missing[start : start + 64]
                for text, vector in zip(chunk, self.embed(chunk), strict=True):
                    self._examples[text] = vector
            rows = []
            for text in texts:
                self._examples.move_to_end(text)
                rows.append(self._examples[text])
            while len(self._examples) > EXAMPLE_CACHE_SIZE:
                self._examples.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    def embed_prompts(self, prompts: list[str]) -> np.ndarray:
        if len(prompts) == 1:
            return self.embed_prompt(prompts[0])[None, :]
        return self.embed(prompts)

    def embed_prompts_routed(self, prompts: list[str], head, base: bool = True):
        """(embeddings, router embeddings of the fine-tuned `head`), one shared bottom;
        `base=False`: (None, router embeddings), without the base top layers."""
        self.load()
        if len(prompts) == 1:
            pooled, routed = self.embed_prompt(prompts[0], head, base)
            return (None if pooled is None else pooled[None, :]), routed[None, :]
        with self._run_lock:
            return self._forward(prompts, head, base)

    def similarities(
        self,
        prompts: list[str],
        categories: list[Category],
        *,
        embedded: np.ndarray | None = None,
        adaptation=None,
    ) -> np.ndarray:
        """prompts x categories: the description score (mean of the whole-text cosine and
        the best clause's), averaged with the examples' prototype and nearest-example
        cosines when the category has examples; with a traffic `adaptation`
        (routing.services.adaptation) covering every label, blended with its prototype
        cosines."""
        pieces = [category_texts(c) for c in categories]
        vectors = self._cached([text for texts in pieces for text in texts])
        if embedded is None:
            embedded = self.embed_prompts(prompts)
        sims = embedded @ np.stack(vectors).T
        columns, start = [], 0
        for category, texts in zip(categories, pieces, strict=True):
            block = sims[:, start : start + len(texts)]
            column = 0.5 * block[:, 0] + 0.5 * block.max(axis=1)
            start += len(texts)
            if category.examples:
                examples = self.example_vectors(list(category.examples))
                prototype = examples.mean(axis=0)
                prototype /= max(float(np.linalg.norm(prototype)), 1e-9)
                nearest = (embedded @ examples.T).max(axis=1)
                column = (column + embedded @ prototype + nearest) / 3
            columns.append(column)
        sims = np.stack(columns, axis=1)
        labels = [c.label for c in categories]
        if adaptation is not None and adaptation.covers(labels):
            sims = adaptation.adjust(sims, embedded, labels)
        return sims

    def scores_from(self, sims: np.ndarray, *, multi_label: bool) -> np.ndarray:
        temperature = settings.TOKENFLOW_CLASSIFIER_TEMPERATURE
        if multi_label:
            return sigmoid(sims, settings.TOKENFLOW_CLASSIFIER_THRESHOLD, temperature)
        return softmax(sims, temperature)

    def classify(
        self,
        prompt: str,
        categories: list[Category],
        *,
        multi_label: bool = False,
        head: "LinearHead | None" = None,
        adaptation=None,
    ) -> ClassifierResult:
        return self.classify_many(
            [prompt], categories, multi_label=multi_label, head=head, adaptation=adaptation
        )[0]

    def classify_many(
        self,
        prompts: list[str],
        categories: list[Category],
        *,
        multi_label: bool = False,
        head: "LinearHead | None" = None,
        adaptation=None,
    ) -> list[ClassifierResult]:
        """One forward pass for several prompts (benchmarks, batch jobs). A fine-tuned head
        (routing.classifiers.finetune) scores the prompts' router embeddings; a traffic
        adaptation (single-label only) adjusts the zero-shot similarities."""
        labels = [c.label for c in categories]
        finetuned = head is not None and getattr(head, "top_layers", None) is not None
        if finetuned and not multi_label and head.covers(labels):
            # every category is the router's: zero-shot would get no probability mass
            _, routed = self.embed_prompts_routed(prompts, head, base=False)
            return [
                ClassifierResult(list(zip(labels, map(float, row), strict=True)))
                for row in head.probabilities_for(routed, labels)
            ]
        if finetuned and not multi_label:
            embedded, routed = self.embed_prompts_routed(prompts, head)
        else:
            embedded = routed = self.embed_prompts(prompts)
        sims = self.similarities(
            prompts,
            categories,
            embedded=embedded,
            adaptation=None if multi_label else adaptation,
        )
        labels = [c.label for c in categories]
        results = []
        for vector, row in zip(routed, sims, strict=True):
            scores = self.scores_from(row, multi_label=multi_label)
            if head is not None and not multi_label:
                scores = head.blend(vector, labels, scores)
            results.append(ClassifierResult(list(zip(labels, map(float, scores), strict=True))))
        return results


class LinearHead:
    """A trained softmax-regression head over prompt embeddings (a RouterHead row).

    `blend` keeps the zero-shot probability mass of the categories the head was not
    trained on and shares the rest out by the head's probabilities: categories it does
    not know fall back to zero-shot, and the scores still sum to 1.
    """

    def __init__(self, labels: list[str], weights: np.ndarray, bias: np.ndarray, version=None):
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.version = version

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self.weights.T + self.bias
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)

    def blend(self, vector: np.ndarray, labels: list[str], zero_shot: np.ndarray) -> np.ndarray:
        known = [i for i, label in enumerate(labels) if label in self.index]
        if len(known) < 2:
            return zero_shot
        rows = [self.index[labels[i]] for i in known]
        logits = self.weights[rows] @ vector + self.bias[rows]
        head = softmax(logits, 1.0)
        scores = np.array(zero_shot, dtype=np.float64)
        scores[known] = scores[known].sum() * head
        return scores
