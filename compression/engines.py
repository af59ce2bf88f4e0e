"""Compression engines: a small base class and LLMLingua-backed backends chosen in settings.

- `FastCompressor` (default): LLMLingua's loader and model, but ONE scoring forward pass
  (int8 dynamic quantization, `torch.inference_mode`); words are ranked by self-information
  and picked greedily to an exact cl100k budget. With a `question`, sentences are ranked
  LongLLMLingua-style by the conditional perplexity of the question and the best one is kept.
- `StockCompressor`: llmlingua 0.2.2's own `PromptCompressor.compress_prompt` (iterative
  re-scoring), through the KV-cache adapter. The reference for quality and speed.
- `LLMLingua2Compressor`: `PromptCompressor(use_llmlingua2=True)` on a token-classification
  checkpoint (none ships offline: a clear 503 says how to configure one).

Backends are created once per process (`get_compressor`) and load their model lazily under
a lock, so concurrent requests never load it twice; a failed load is retried next time.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from routing.tokens import count_tokens
from tokenflow_site.assets import AssetError, local_model_path, use_tiktoken_cache
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

METHODS = ("llmlingua", "llmlingua2")
LLMLINGUA2_DEFAULT_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
# LongLLMLingua appends " We can get the answer to this question in the given documents." to
# the question; with a 135M model that dilutes the signal (bench: worse ranks), so it is off.
QUESTION_SUFFIX = ""
_WORD = re.compile(r"\s*\S+")
_SENTENCE = re.compile(r"[^\n]*?(?:[.!?]+(?=\s|$)|\n+|$)")
_TERM = re.compile(r"[a-z0-9]+")
_ENTITY = re.compile(r"\d|^\s*[\W_]*[A-Z]")
_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by did do does for from has have how in is it its of on or that "
        "the this to was were what when where which who whom why will with",
    )
)


class CompressorUnavailable(ApiError):
    """The compressor model cannot be loaded: 503 with the reason and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="compressor_unavailable", status=503)


@dataclass
class CompressionRequest:
    """What a backend compresses: `text` down to about `target_tokens` (counted in cl100k)."""

    text: str
    target_tokens: int
    question: str = ""
    instruction: str = ""
    force_tokens: list[str] = field(default_factory=list)


class CompressorBackend:
    """Base class: `compress()` returns the compressed text; the model loads on first use."""

    name = "base"

    def __init__(self, *, model: str = "", options: dict[str, Any] | None = None) -> None:
        self.model_name = model
        self.options = options or {}
        self._lock = threading.Lock()
        self._loaded: Any = None
        self.load_count = 0

    def ensure_loaded(self) -> Any:
        """Load once per process (double-checked under the lock); map failures to a 503."""
        if self._loaded is not None:
            return self._loaded
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = self.load()
                except CompressorUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - any loader failure is reported
                    logger.exception("Compressor %s failed to load", self.name)
                    raise CompressorUnavailable(self.load_error_message(exc)) from exc
                self.load_count += 1
        return self._loaded

    def load(self) -> Any:
        raise NotImplementedError

    def compress(self, request: CompressionRequest) -> str:
        raise NotImplementedError

    def load_error_message(self, exc: Exception) -> str:
        return (
            f"The compression model {self.model_name!r} could not be loaded ({exc}). "
            "Run `python manage.py prepare_models`, or set TOKENFLOW_COMPRESSOR_MODEL to a "
            "local Hugging Face model directory."
        )


def _model_path(configured: str) -> str:
    """TOKENFLOW_COMPRESSOR_MODEL, else the offline SmolLM2 directory."""
    if configured:
        return configured
    try:
        return local_model_path()
    except AssetError as exc:
        raise CompressorUnavailable(str(exc)) from exc


def _model_config(model: str) -> dict[str, Any]:
    """from_pretrained options: never hang on the hub unless downloads are allowed."""
    local = Path(model).is_dir()
    return {"local_files_only": local or not settings.TOKENFLOW_COMPRESSOR_ALLOW_DOWNLOAD}


def _prompt_compressor(model: str, **kwargs: Any) -> Any:
    # llmlingua imports torch and transformers: heavy, so only when a model is first needed.
    use_tiktoken_cache()
    from llmlingua import PromptCompressor

    return PromptCompressor(
        model_name=model, device_map="cpu", model_config=_model_config(model), **kwargs
    )


class StockCompressor(CompressorBackend):
    """llmlingua's own iterative `compress_prompt` (fp32), via the legacy KV-cache adapter."""

    name = "stock"

    def load(self) -> Any:
        from compression.kv_adapter import adapt_legacy_kv

        self.model_name = _model_path(self.model_name)
        compressor = _prompt_compressor(self.model_name)
        adapt_legacy_kv(compressor.model)
        return compressor

    def compress(self, request: CompressionRequest) -> str:
        compressor = self.ensure_loaded()
        original = max(count_tokens(request.text), 1)
        rate = min(1.0, request.target_tokens / original)
        kwargs: dict[str, Any] = {"rate": rate, "concate_question": False}
        context = [request.text]
        if request.question:
            # LongLLMLingua: rank sentences by the question's conditional perplexity.
            context = [s for s in split_sentences(request.text) if s.strip()] or context
            kwargs.update(question=request.question, rank_method="longllmlingua")
        with self._lock:  # PromptCompressor keeps per-call state on self: one call at a time
            result = compressor.compress_prompt(context, **kwargs)
        return result["compressed_prompt"].strip()


class LLMLingua2Compressor(CompressorBackend):
    """LLMLingua-2 token classification (needs e.g. microsoft/llmlingua-2-* checkpoints)."""

    name = "llmlingua2"

    def load(self) -> Any:
        self.model_name = self.model_name or LLMLINGUA2_DEFAULT_MODEL
        compressor = _prompt_compressor(self.model_name, use_llmlingua2=True)
        architectures = getattr(compressor.model.config, "architectures", None) or []
        if not any("ForTokenClassification" in arch for arch in architectures):
            raise CompressorUnavailable(
                f"{self.model_name!r} is not a token-classification model; LLMLingua-2 needs "
                "one such as microsoft/llmlingua-2-xlm-roberta-large-meetingbank."
            )
        return compressor

    def load_error_message(self, exc: Exception) -> str:
        return (
            f"LLMLingua-2 needs a token-classification checkpoint and {self.model_name!r} "
            f"could not be loaded ({str(exc)[:300]}). No such checkpoint ships offline: "
            "download one (e.g. microsoft/llmlingua-2-xlm-roberta-large-meetingbank) and set "
            "TOKENFLOW_COMPRESSOR_MODEL to its directory (or allow downloads with "
            "TOKENFLOW_COMPRESSOR_ALLOW_DOWNLOAD=1), "
            "or use TOKENFLOW_COMPRESSOR_METHOD=llmlingua with the local model "
            "(run `python manage.py prepare_models`)."
        )

    def compress(self, request: CompressionRequest) -> str:
        compressor = self.ensure_loaded()
        original = max(count_tokens(request.text), 1)
        with self._lock:
            result = compressor.compress_prompt(
                [request.text],
                rate=min(1.0, request.target_tokens / original),
                force_tokens=list(request.force_tokens),
                use_context_level_filter=False,
            )
        return result["compressed_prompt"].strip()


# --- the fast single-pass engine ----------------------------------------------------------


def lexical_scores(chunks: list[str], question: str) -> list[float]:
    """BM25 of the question's content words (prefix-stemmed) against each chunk."""

    def terms(text: str) -> list[str]:
        return [w[:6] for w in _TERM.findall(text.lower()) if w not in _STOPWORDS]

    docs = [terms(chunk) for chunk in chunks]
    average = sum(len(d) for d in docs) / max(len(docs), 1) or 1.0
    scores = []
    for doc in docs:
        score = 0.0
        for term in set(terms(question)):
            frequency = doc.count(term)
            if not frequency:
                continue
            df = sum(term in d for d in docs)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * frequency * 2.2 / (frequency + 1.2 * (0.25 + 0.75 * len(doc) / average))
        scores.append(score)
    return scores


def _zscores(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) or 1.0
    return [(v - mean) / spread for v in values]


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) covering `text` exactly, in order."""
    return [m.group(0) for m in _SENTENCE.finditer(text) if m.group(0)]


@dataclass
class _Word:
    start: int
    end: int
    cost: int  # cl100k tokens
    score: float = 0.0
    forced: bool = False


class FastCompressor(CompressorBackend):
    """Self-information from ONE forward pass; exact budget; question-aware sentence ranking."""

    name = "fast"

    def load(self) -> Any:
        import torch

        self.model_name = _model_path(self.model_name)
        compressor = _prompt_compressor(self.model_name)
        model = compressor.model.eval()
        if self.options.get("quantize", "int8") == "int8":
            # Dynamic int8 Linear layers: ~1.4x faster on AVX-512 VNNI CPUs, same ranking.
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        threads = int(self.options.get("threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        return compressor.tokenizer, model

    # -- scoring -------------------------------------------------------------------------

    def _token_losses(self, ids: list[int], prefix: list[int]) -> list[float]:
        """-log p(token | everything before it) for each id, conditioned on `prefix`."""
        import torch

        tokenizer, model = self.ensure_loaded()
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        head = bos + prefix
        window = int(getattr(model.config, "max_position_embeddings", 2048)) - len(head) - 1
        losses: list[float] = []
        with torch.inference_mode():
            for begin in range(0, len(ids), max(window, 1)):
                chunk = ids[begin : begin + window]
                input_ids = torch.tensor([head + chunk])
                hidden = model.model(input_ids=input_ids).last_hidden_state[0]
                # Only the positions that predict `chunk`; lm_head in slices keeps memory low.
                hidden = hidden[len(head) - 1 : -1] if head else hidden[:-1]
                targets = torch.tensor(chunk[0 if head else 1 :])
                part: list[float] = [] if head else [float("inf")]
                for s in range(0, hidden.shape[0], 512):
                    logits = model.lm_head(hidden[s : s + 512]).float()
                    nll = torch.logsumexp(logits, -1) - logits.gather(
                        1, targets[s : s + 512, None]
                    ).squeeze(1)
                    part.extend(nll.tolist())
                losses.extend(part)
        return losses

    def _question_losses(self, sentences: list[str], question: str) -> list[float]:
        """Mean NLL of the question after each sentence alone (lower = more relevant)."""
        import torch

        tokenizer, model = self.ensure_loaded()
        q_ids = tokenizer(question + QUESTION_SUFFIX, add_special_tokens=False).input_ids
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = [tokenizer(s, add_special_tokens=False).input_ids[-400:] for s in sentences]
        results = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # less padding
        with torch.inference_mode():
            for begin in range(0, len(order), 8):
                batch = [rows[i] for i in order[begin : begin + 8]]
                width = max(len(r) for r in batch) + len(q_ids)
                ids = torch.full((len(batch), width), pad)
                for i, row in enumerate(batch):
                    seq = row + q_ids
                    ids[i, : len(seq)] = torch.tensor(seq)
                # Right padding under a causal mask never influences the real positions.
                hidden = model.model(input_ids=ids).last_hidden_state
                for i, (row, slot) in enumerate(zip(batch, order[begin : begin + 8], strict=True)):
                    h = hidden[i, len(row) - 1 : len(row) + len(q_ids) - 1]
                    logits = model.lm_head(h).float()
                    target = torch.tensor(q_ids)
                    nll = torch.logsumexp(logits, -1) - logits.gather(1, target[:, None]).squeeze(1)
                    results[slot] = float(nll.mean())
        return results

    # -- selection -----------------------------------------------------------------------

    def _words(self, request: CompressionRequest) -> list[_Word]:
        """Whitespace-delimited words with their self-information (mean token NLL)."""
        tokenizer, _ = self.ensure_loaded()
        text = request.text
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        prefix = (
            tokenizer(request.instruction + "\n\n", add_special_tokens=False).input_ids
            if request.instruction
            else []
        )
        losses = self._token_losses(encoded["input_ids"], prefix)
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        starts = [s for s, _ in spans]
        totals = [0.0] * len(spans)
        counts = [0] * len(spans)
        for (tok_start, tok_end), loss in zip(encoded["offset_mapping"], losses, strict=False):
            if tok_end <= tok_start:
                continue
            index = max(0, bisect.bisect_right(starts, tok_start) - 1)
            totals[index] += loss if math.isfinite(loss) else 20.0
            counts[index] += 1
        from routing.tokens import _encoding

        encoding = _encoding(settings.TOKENFLOW_COMPRESSOR_TOKEN_ENCODING)
        costs = encoding.encode_batch([text[s:e] for s, e in spans], disallowed_special=())
        # Numbers, IDs and capitalised names carry the facts a reader needs: a soft bonus
        # (in nats), like llmlingua's force_reserve_digit but without forcing them all.
        bonus = float(self.options.get("entity_bonus", 3.0))
        words = []
        for (start, end), total, count, cost in zip(spans, totals, counts, costs, strict=True):
            score = total / count if count else 0.0
            if bonus and _ENTITY.search(text[start:end]):
                score += bonus
            words.append(_Word(start, end, len(cost), score))
        return words

    def _mark_forced(self, words: list[_Word], text: str, forced_ranges: list[tuple]) -> None:
        if not forced_ranges:
            return
        starts = [w.start for w in words]
        for begin, end in forced_ranges:
            first = max(0, bisect.bisect_right(starts, begin) - 1)
            for word in words[first:]:
                if word.start >= end:
                    break
                if word.end > begin:
                    word.forced = True

    def _apply_question(self, words: list[_Word], request: CompressionRequest) -> list[tuple]:
        """Boost words by their sentence's relevance; return the top sentences' char ranges.

        Relevance is LongLLMLingua's conditional perplexity of the question given each sentence,
        plus a BM25 term (weight `lexical_weight`): a 135M model alone misranks too often.
        """
        sentences, ranges, pos = [], [], 0
        for sentence in split_sentences(request.text):
            if sentence.strip():
                sentences.append(sentence)
                ranges.append((pos, pos + len(sentence)))
            pos += len(sentence)
        if len(sentences) < 2:
            return []
        weight = float(self.options.get("lexical_weight", 1.0))
        losses = self._question_losses(sentences, request.question)
        lexical = lexical_scores(sentences, request.question)
        relevance = [
            -loss + weight * lex
            for loss, lex in zip(_zscores(losses), _zscores(lexical), strict=True)
        ]
        order = sorted(range(len(sentences)), key=lambda i: -relevance[i])
        rank = {index: r for r, index in enumerate(order)}
        scores = [w.score for w in words]
        spread = (max(scores) - min(scores)) if scores else 1.0
        starts = [r[0] for r in ranges]
        for word in words:
            index = max(0, bisect.bisect_right(starts, word.start) - 1)
            word.score += spread * (1.0 - rank[index] / max(len(sentences) - 1, 1))
        top_k = int(self.options.get("question_top_k", 2))
        return [ranges[i] for i in order[:top_k]]

    @staticmethod
    def _select(words: list[_Word], budget: int) -> list[bool]:
        keep = [w.forced for w in words]
        used = sum(w.cost for w in words if w.forced)
        for index in sorted(range(len(words)), key=lambda i: -words[i].score):
            if keep[index]:
                continue
            if used + words[index].cost > budget:
                continue
            keep[index] = True
            used += words[index].cost
        return keep

    @staticmethod
    def _render(text: str, words: list[_Word], keep: list[bool]) -> str:
        parts: list[str] = []
        gap_start = 0
        for word, kept in zip(words, keep, strict=True):
            if not kept:
                continue
            body = text[word.start : word.end].lstrip()
            gap = text[gap_start : word.end - len(body)]
            if parts:
                parts.append("\n" if "\n" in gap else " ")
            parts.append(body)
            gap_start = word.end
        return "".join(parts)

    def compress(self, request: CompressionRequest) -> str:
        text = request.text
        words = self._words(request)
        forced: list[tuple] = []
        for token in request.force_tokens:
            forced.extend((m.start(), m.end()) for m in re.finditer(re.escape(token), text))
        if request.question:
            spent = 0
            for begin, end in self._apply_question(words, request):
                spent += sum(w.cost for w in words if begin <= w.start < end)
                if spent <= 0.6 * request.target_tokens:  # keep the answering sentences whole
                    forced.append((begin, end))
        self._mark_forced(words, text, forced)
        # The per-word costs are an estimate of the joined text's count: correct and retry.
        target = request.target_tokens
        budget, best_text, best_error = target, "", math.inf
        for _ in range(5):
            candidate = self._render(text, words, self._select(words, budget))
            actual = count_tokens(candidate, encoding=settings.TOKENFLOW_COMPRESSOR_TOKEN_ENCODING)
            error = abs(actual - target)
            if error < best_error:
                best_text, best_error = candidate, error
            if error <= max(1, 0.03 * target) or actual == 0:
                break
            budget = max(1, int(budget * target / actual))
        return best_text


# --- registry ------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_instances: dict[tuple[str, str, str], CompressorBackend] = {}


def backend_path(*, engine: str | None = None, method: str | None = None) -> str:
    """Dotted path of the backend for an engine name (or path) and method."""
    method = method or settings.TOKENFLOW_COMPRESSOR_METHOD
    if method in settings.TOKENFLOW_COMPRESSOR_METHOD_BACKENDS:
        return settings.TOKENFLOW_COMPRESSOR_METHOD_BACKENDS[method]
    engine = engine or settings.TOKENFLOW_COMPRESSOR
    return settings.TOKENFLOW_COMPRESSOR_ENGINES.get(engine, engine)


def get_compressor(*, engine: str | None = None, method: str | None = None) -> CompressorBackend:
    """The process-wide backend instance (created once, thread-safe; the model loads lazily)."""
    path = backend_path(engine=engine, method=method)
    model = settings.TOKENFLOW_COMPRESSOR_MODEL
    key = (path, model, method or settings.TOKENFLOW_COMPRESSOR_METHOD)
    with _registry_lock:
        if key not in _instances:
            try:
                backend_class = import_string(path)
            except ImportError as exc:
                raise ApiError(
                    f"Unknown compression engine {path!r}.", field="engine", code="invalid"
                ) from exc
            _instances[key] = backend_class(
                model=model, options=settings.TOKENFLOW_COMPRESSOR_OPTIONS
            )
        return _instances[key]


def reset_compressors() -> None:
    """Forget every backend instance (tests, settings changes)."""
    with _registry_lock:
        _instances.clear()
