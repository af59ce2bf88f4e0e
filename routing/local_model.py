"""The local causal LM, loaded once per process (shared by generation and tests)."""

import threading
from functools import lru_cache

from django.conf import settings

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


def local_threads_apply() -> None:
    """Set TOKENFLOW_LOCAL_THREADS for the calling thread (OpenMP thread counts are per thread)."""
    import torch  # already imported by _load

    threads = settings.TOKENFLOW_LOCAL_THREADS
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def load_local_model():
    """(tokenizer, model) for TOKENFLOW_LOCAL_MODEL or the converted SmolLM2; thread-safe.

    Also applies TOKENFLOW_LOCAL_THREADS to the calling thread, which is the one that generates.
    """
    path = local_model_path()
    with _lock:
        loaded = _load(path)
    local_threads_apply()
    return loaded
