"""Stock llmlingua 0.2.2 through the KV-cache adapter (the bench's reference engine)."""

import pytest
import torch

from compression.kv_adapter import adapt_legacy_kv, cache_to_legacy, legacy_to_cache


def test_kv_adapter_round_trip():
    legacy = [(torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4)) for _ in range(2)]
    cache = legacy_to_cache(legacy)
    assert cache.get_seq_length() == 5
    back = cache_to_legacy(cache)
    assert len(back) == 2
    for (k, v), (k2, v2) in zip(legacy, back, strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert legacy_to_cache(None) is None and cache_to_legacy(None) is None


def test_adapter_wraps_forward_once():
    calls = []

    class Output:
        past_key_values = None

    class Model:
        def forward(self, *args, **kwargs):
            calls.append(kwargs.get("past_key_values"))
            return Output()

    model = Model()
    adapt_legacy_kv(model)
    adapt_legacy_kv(model)
    model.forward(past_key_values=[(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))])
    assert len(calls) == 1
    assert not isinstance(calls[0], list)


@pytest.mark.model
@pytest.mark.django_db
def test_stock_engine_compresses_with_llmlingua(client, auth, long_text):
    text = long_text[:700]  # stock is slow (iterative): keep this short
    response = client.post(
        "/api/compress",
        {"text": text, "ratio": 0.5, "engine": "stock"},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["engine"] == "stock"
    assert 0 < body["compressed_tokens"] < body["original_tokens"]
