"""What the semantic cache compares: a text's vector, from one of two embedders.

- `minilm`: all-MiniLM-L6-v2 (the process's one loaded copy, batched with concurrent
  classifications), a transformer forward pass: ~8 ms alone, 25-40 ms in a busy server.
- `static`: a static model distilled from that MiniLM (tokenflow_site.assets.prepare_static,
  model2vec's method): a text's vector is the normalised mean of its tokens' rows, ~25 us.

Every stored vector carries its embedder's `id` (name, dimensions, and for the static model
a digest of its vectors), and the index only compares vectors of one id: switching the
setting, or re-distilling, never compares incompatible vectors. The static model also
serves as the MiniLM path's prefilter (response_cache.index): a candidate whose static
similarity is far below any hit's is not worth a MiniLM pass.
"""

import hashlib
import json
import logging
import threading

import numpy as np
from django.conf import settings

EMBEDDERS = ("minilm", "static")
logger = logging.getLogger(__name__)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: by ONNX Runtime when the export is prepared (`prepare_models`) and
    TOKENFLOW_CACHE_ONNX is on (~3 ms a short text: run inline, in the request's database
    hop), else by torch, the classifier's loaded copy (~8-11 ms: in a worker thread). Both
    give the same vectors (to 1e-7), so they share one id."""

    dimensions = 384

    def __init__(self, *, quantized: bool = False) -> None:
        # quantized: the int8 export only (its vectors differ from torch's: no fallback).
        self.quantized = quantized
        self.name = "minilm-int8" if quantized else "minilm"
        self.id = "minilm/all-MiniLM-L6-v2/384" + ("/int8" if quantized else "")
        self._lock = threading.Lock()
        self._session = None
        self._tokenizer = None
        self._onnx_failed = False

    @property
    def fast(self) -> bool:
        """Whether a lookup runs it inline (ONNX Runtime) rather than in a worker thread."""
        return self._onnx() is not None

    def _onnx(self):
        if not settings.TOKENFLOW_CACHE_ONNX or self._onnx_failed:
            return None
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None and not self._onnx_failed:
                try:
                    self._load_onnx()
                except Exception:  # noqa: BLE001 - not prepared or not installed: torch
                    self._onnx_failed = True
                    logger.warning("Response cache: MiniLM runs on torch (no ONNX export)")
        return self._session

    def _load_onnx(self) -> None:
        # onnxruntime is imported on first use, not at Django start-up.
        import onnxruntime
        from tokenizers import Tokenizer

        from tokenflow_site.assets import ONNX_INT8, onnx_path

        path = onnx_path()
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # Set once, before any thread sees it: `encode` then mutates nothing.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        # One thread: a short text's pass is ~2.8 ms p50 with 1, ~7.8 ms with 2 on the
        # shared 2-core machine (the threads wait on each other).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._tokenizer = tokenizer
        self._session = onnxruntime.InferenceSession(
            str(path / (ONNX_INT8 if self.quantized else "model.onnx")),
            options,
            providers=["CPUExecutionProvider"],
        )

    def embed(self, text: str) -> np.ndarray | None:
        """The vector of `text`, or None when the text is longer than MiniLM's 256-token
        window: two long texts that differ only past it would look identical."""
        from routing.classifiers.embedding import MAX_TOKENS

        session = self._onnx()
        if session is not None:
            ids = self._tokenizer.encode(text).ids  # with [CLS] and [SEP]
            if len(ids) > MAX_TOKENS:
                return None
            input_ids = np.asarray([ids], dtype=np.int64)
            feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
            return session.run(None, feeds)[0][0].astype(np.float32)
        if self.quantized:
            return None  # no export: no vector (the semantic cache is off)
        from routing.classifiers import minilm

        model = minilm()
        # A WordPiece token covers at least one character: short texts need no count.
        if len(text) > MAX_TOKENS - 2 and model.token_count(text) > MAX_TOKENS:
            return None
        return np.asarray(model.embed_prompt(text), dtype=np.float32)


class StaticEmbedder:
    name = "static"
    fast = True  # a lookup and a mean: inline, on the request path

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vectors: np.ndarray | None = None
        self._tokenizer = None
        self.id = ""
        self.dimensions = 0

    def load(self) -> None:
        if self._vectors is not None:
            return
        with self._lock:
            if self._vectors is not None:
                return
            from tokenizers import Tokenizer

            from tokenflow_site.assets import MANIFEST, static_path

            path = static_path()
            vectors = np.load(path / "vectors.npy")
            manifest = json.loads((path / MANIFEST).read_text())["files"]
            digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            # Set once, before any thread sees it: `encode` then mutates nothing and is
            # safe to call concurrently (changing these while encoding is what is not).
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self.dimensions = vectors.shape[1]
            self.id = f"static/{digest[:12]}/{self.dimensions}"
            self._tokenizer = tokenizer
            self._vectors = vectors

    def embed(self, text: str) -> np.ndarray | None:
        """The normalised mean of the rows of `text`'s tokens (None: no known token).
        The whole text counts, however long: no window to fall out of."""
        self.load()
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return None
        vector = self._vectors[ids].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 1e-9 else None

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """One row per text (zeros where `embed` gives None)."""
        self.load()
        rows = [self.embed(text) for text in texts]
        return np.stack(
            [r if r is not None else np.zeros(self.dimensions, np.float32) for r in rows]
        )


_minilm = MiniLMEmbedder()
_minilm_int8 = MiniLMEmbedder(quantized=True)
_static = StaticEmbedder()


def get_embedder(name: str | None = None) -> MiniLMEmbedder | StaticEmbedder:
    """The embedder named by TOKENFLOW_CACHE_EMBEDDER (or `name`), loaded."""
    name = name or settings.TOKENFLOW_CACHE_EMBEDDER
    if name == "static":
        _static.load()
        return _static
    return _minilm_int8 if name == "minilm-int8" else _minilm


_static_missing = False


def prefilter_embedder() -> StaticEmbedder | None:
    """The static model when the MiniLM path is prefiltered by it (and it is prepared)."""
    global _static_missing
    if (
        not settings.TOKENFLOW_CACHE_EMBEDDER.startswith("minilm")
        or settings.TOKENFLOW_CACHE_PREFILTER <= 0
    ):
        return None
    if _static_missing:
        return None
    try:
        _static.load()
    except Exception:  # noqa: BLE001 - not prepared: the MiniLM path runs unfiltered
        _static_missing = True  # until the process restarts (after `prepare_models`)
        logger.warning("Response cache: no static model; the MiniLM path is not prefiltered")
        return None
    return _static


def default_threshold() -> float:
    """The similarity of a semantic hit: TOKENFLOW_CACHE_SIMILARITY, else the embedder's
    default chosen on the labelled tune split (bench/cache.py)."""
    if settings.TOKENFLOW_CACHE_SIMILARITY is not None:
        return settings.TOKENFLOW_CACHE_SIMILARITY
    return DEFAULT_THRESHOLDS[settings.TOKENFLOW_CACHE_EMBEDDER]


# Chosen on the tune split of bench/data/cache_pairs.jsonl (bench/cache.py).
DEFAULT_THRESHOLDS = {"minilm": 0.89, "minilm-int8": 0.885, "static": 0.965}
