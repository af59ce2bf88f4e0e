"""Embedding-similarity zero-shot classifier (default, offline): all-MiniLM-L6-v2.

The prompt and each category are mean-pooled, L2-normalised MiniLM embeddings. A
category with a description is embedded as "label: description" AND as each clause of
the description; its similarity is the mean of the whole-text cosine and the best
clause's (a long description dilutes a short prompt's match; bench/classification.py:
72% -> 86% accuracy). Similarities become calibrated scores: a softmax with a
temperature (single-label, sums to 1) or an independent sigmoid around a threshold
(multi-label).
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

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.numpy()

    def embed_prompt(self, text: str) -> np.ndarray:
        """One prompt's embedding, batched with the prompts of concurrent requests.

        No timer and no thread: a caller queues its prompt, then whoever holds the model
        lock runs every queued prompt (up to TOKENFLOW_CLASSIFIER_MAX_BATCH) in one
        forward pass; callers whose prompt was in it just take their row. Prompts pile
        up exactly while the model is busy, so batching costs an idle server nothing.
        """
        self.load()
        future: Future[np.ndarray] = Future()
        with self._pending_lock:
            self._pending.append((text, future))
        limit = max(1, settings.TOKENFLOW_CLASSIFIER_MAX_BATCH)
        while not future.done():
            with self._run_lock:
                if future.done():
                    break
                with self._pending_lock:
                    batch, self._pending = self._pending[:limit], self._pending[limit:]
                try:
                    vectors = self._forward([queued for queued, _ in batch])
                except Exception as exc:  # every caller in the batch gets it
                    for _, waiting in batch:
                        waiting.set_exception(exc)
                    continue
                for (_, waiting), vector in zip(batch, vectors, strict=True):
                    waiting.set_result(vector)
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

    def similarities(self, prompts: list[str], categories: list[Category]) -> np.ndarray:
        """prompts x categories: mean of the whole-text cosine and the best clause's."""
        pieces = [category_texts(c) for c in categories]
        vectors = self._cached([text for texts in pieces for text in texts])
        if len(prompts) == 1:
            embedded = self.embed_prompt(prompts[0])[None, :]
        else:
            embedded = self.embed(prompts)
        sims = embedded @ np.stack(vectors).T
        columns, start = [], 0
        for texts in pieces:
            block = sims[:, start : start + len(texts)]
            columns.append(0.5 * block[:, 0] + 0.5 * block.max(axis=1))
            start += len(texts)
        return np.stack(columns, axis=1)

    def scores_from(self, sims: np.ndarray, *, multi_label: bool) -> np.ndarray:
        temperature = settings.TOKENFLOW_CLASSIFIER_TEMPERATURE
        if multi_label:
            return sigmoid(sims, settings.TOKENFLOW_CLASSIFIER_THRESHOLD, temperature)
        return softmax(sims, temperature)

    def classify(
        self, prompt: str, categories: list[Category], *, multi_label: bool = False
    ) -> ClassifierResult:
        return self.classify_many([prompt], categories, multi_label=multi_label)[0]

    def classify_many(
        self, prompts: list[str], categories: list[Category], *, multi_label: bool = False
    ) -> list[ClassifierResult]:
        """One forward pass for several prompts (benchmarks, batch jobs)."""
        sims = self.similarities(prompts, categories)
        results = []
        for row in sims:
            scores = self.scores_from(row, multi_label=multi_label)
            results.append(
                ClassifierResult(
                    [(c.label, float(s)) for c, s in zip(categories, scores, strict=True)]
                )
            )
        return results
