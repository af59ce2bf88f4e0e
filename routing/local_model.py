"""The local causal LM, loaded once per process (shared by generation and tests)."""

import threading
from functools import lru_cache

from tokenflow_site.assets import local_model_path

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load(path: str):
    # torch/transformers are heavy: import only when the local model is first used.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    return tokenizer, model


def load_local_model():
    """(tokenizer, model) for TOKENFLOW_LOCAL_MODEL or the converted SmolLM2; thread-safe."""
    path = local_model_path()
    with _lock:
        return _load(path)
