"""Local model throughput: raw `model.generate` vs the same model streamed by TokenFlow.

In one process (same weights, same thread count): raw greedy `generate`, then the local
provider's stream (worker thread + queue + per-token decode), then 4 concurrent requests
(aggregate tokens/s) one at a time (TOKENFLOW_LOCAL_CONCURRENCY=1) and batched into one
forward pass (=4). Finally one
stream through a daphne process over SSE, measured first (see the OpenMP note in main()).

    .venv/bin/python bench/local_model.py [--tokens 64 --runs 3]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenflow_site.settings")

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def raw_generate(tokens: int) -> float:
    import torch

    from routing.local_model import load_local_model

    tokenizer, model = load_local_model()
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
    produced = output.shape[1] - inputs["input_ids"].shape[1]
    return produced / (time.perf_counter() - started)


async def provider_stream(tokens: int) -> tuple[int, float]:
    from routing.providers.base import ChatRequest
    from routing.providers.local_hf import LocalHFProvider

    request = ChatRequest(messages=PROMPT, model="local", max_tokens=tokens)
    started = time.perf_counter()
    usage = None
    async for chunk in LocalHFProvider(name="local").stream(request):
        usage = chunk.usage or usage
    return usage["completion_tokens"], time.perf_counter() - started


async def concurrent(tokens: int, count: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(provider_stream(tokens) for _ in range(count)))
    return sum(n for n, _ in results) / (time.perf_counter() - started)


def daphne_stream(gateway, key: str, tokens: int) -> float:
    body = {"model": "local/bench", "messages": PROMPT, "max_tokens": tokens}
    started, usage = time.perf_counter(), None
    with httpx.stream(
        "POST",
        f"{gateway.url}/api/generate",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
    return usage["completion_tokens"] / (time.perf_counter() - started)


def start_gateway():
    from bench.harness import Gateway

    gateway = Gateway()
    gateway.manage("migrate", "--noinput")
    gateway.shell(
        "from routing.models import ModelRanking; ModelRanking.objects.create("
        "name='local/bench', provider='local', upstream_model='smollm2')"
    )
    key = gateway.api_key()
    gateway.start()
    daphne_stream(gateway, key, 4)  # loads the model in the server process
    return gateway, key


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import django

    django.setup()
    import torch

    # The server first, before this process runs torch: idle OpenMP threads of a process that
    # just generated spin for a while and, on 2 cores, slow the other process several-fold.
    gateway, key = start_gateway()
    try:
        served = [daphne_stream(gateway, key, args.tokens) for _ in range(args.runs)]
    finally:
        gateway.stop()
    raw_generate(8)  # load + warm up
    raw, streamed = [], []
    for _ in range(args.runs):  # interleaved: machine noise hits both alike
        raw.append(raw_generate(args.tokens))
        count, seconds = asyncio.run(provider_stream(args.tokens))
        streamed.append(count / seconds)
    from django.conf import settings

    settings.TOKENFLOW_LOCAL_CONCURRENCY = 1
    one_at_a_time = asyncio.run(concurrent(args.tokens, 4))
    settings.TOKENFLOW_LOCAL_CONCURRENCY = 4
    batched = asyncio.run(concurrent(args.tokens, 4))
    served = statistics.median(served)
    print(
        f"local model: SmolLM2-135M fp32, greedy, {args.tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}, median of {args.runs}"
    )
    print(f"  raw model.generate         : {statistics.median(raw):6.1f} tokens/s")
    print(f"  local provider stream      : {statistics.median(streamed):6.1f} tokens/s")
    print(f"  4 concurrent, one at a time: {one_at_a_time:6.1f} tokens/s aggregate")
    print(f"  4 concurrent, batched      : {batched:6.1f} tokens/s aggregate")
    print(f"  through daphne (SSE)       : {served:6.1f} tokens/s (incl. HTTP, DB, prefill)")
    print(
        f"  ratio provider/raw {statistics.median(streamed) / statistics.median(raw):.2f}, "
        f"daphne/raw {served / statistics.median(raw):.2f}, "
        f"batched/one-at-a-time {batched / one_at_a_time:.2f}"
    )


if __name__ == "__main__":
    main()
