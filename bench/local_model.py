"""Local model throughput: raw `model.generate` vs the same model streamed by TokenFlow.

In one process (same weights, same thread count): raw greedy `generate`, then the local
provider's stream (worker thread + queue + per-token decode), then 4 concurrent requests
(aggregate tokens/s) one at a time (TOKENFLOW_LOCAL_CONCURRENCY=1) and batched into one
forward pass (=4). And one stream through a server process (uvicorn as `make serve`, or
--server daphne) over SSE, interleaved with the
in-process runs so machine noise hits all alike; server and bench use the same
TOKENFLOW_LOCAL_THREADS (--threads), and the bench's CPU while it waits on daphne is printed
(it must be ~0: only one process computes at a time).

    .venv/bin/python bench/local_model.py [--tokens 64 --runs 3 --threads auto]
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


def daphne_stream(gateway, key: str, tokens: int) -> tuple[float, float, float]:
    """(tokens/s from request start, tokens/s after the first token, bench CPU cores used)."""
    body = {"model": "local/bench", "messages": PROMPT, "max_tokens": tokens}
    started, usage, first = time.perf_counter(), None, None
    cpu = time.process_time()
    with httpx.stream(
        "POST",
        f"{gateway.url}/api/generate",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    ) as response:
        for line in response.iter_lines():
            if first is None and line == "event: text_chunk":
                first = time.perf_counter()
            if line.startswith("data: ") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"]
    ended = time.perf_counter()
    count = usage["completion_tokens"]
    return (
        count / (ended - started),
        (count - 1) / (ended - first),
        (time.process_time() - cpu) / (ended - started),
    )


def start_gateway(threads: str, server: str = "uvicorn"):
    from bench.harness import Gateway

    gateway = Gateway(server=server, TOKENFLOW_LOCAL_THREADS=threads)
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
    parser.add_argument(
        "--threads",
        default=os.environ.get("TOKENFLOW_LOCAL_THREADS", "auto"),
        help="TOKENFLOW_LOCAL_THREADS for the server and this process (auto, 0 = torch default)",
    )
    parser.add_argument(
        "--server", choices=("uvicorn", "daphne"), default="uvicorn", help="make serve's: uvicorn"
    )
    args = parser.parse_args()
    os.environ["TOKENFLOW_LOCAL_THREADS"] = args.threads  # before settings are read
    import django

    django.setup()
    import torch
    from django.conf import settings

    gateway, key = start_gateway(args.threads, args.server)
    try:
        raw_generate(8)  # load + warm up
        raw, streamed, served, served_decode, bench_cpu = [], [], [], [], []
        for _ in range(args.runs):  # interleaved: machine noise hits all alike
            per_request, decode, cpu = daphne_stream(gateway, key, args.tokens)
            served.append(per_request)
            served_decode.append(decode)
            bench_cpu.append(cpu)
            raw.append(raw_generate(args.tokens))
            count, seconds = asyncio.run(provider_stream(args.tokens))
            streamed.append(count / seconds)
    finally:
        gateway.stop()
    settings.TOKENFLOW_LOCAL_CONCURRENCY = 1
    one_at_a_time = asyncio.run(concurrent(args.tokens, 4))
    settings.TOKENFLOW_LOCAL_CONCURRENCY = 4
    batched = asyncio.run(concurrent(args.tokens, 4))
    raw, streamed, served = (statistics.median(v) for v in (raw, streamed, served))
    print(
        f"local model: SmolLM2-135M fp32, greedy, {args.tokens} new tokens, "
        f"TOKENFLOW_LOCAL_THREADS={args.threads} (torch threads {torch.get_num_threads()}), "
        f"median of {args.runs}, served by {args.server}"
    )
    print(f"  raw model.generate         : {raw:6.1f} tokens/s")
    print(f"  local provider stream      : {streamed:6.1f} tokens/s")
    print(f"  4 concurrent, one at a time: {one_at_a_time:6.1f} tokens/s aggregate")
    print(f"  4 concurrent, batched      : {batched:6.1f} tokens/s aggregate")
    print(f"  through the server (SSE)   : {served:6.1f} tokens/s (incl. HTTP, DB, prefill)")
    print(
        f"    after the first token    : {statistics.median(served_decode):6.1f} tokens/s; "
        f"bench CPU while waiting {max(bench_cpu):.2f} cores"
    )
    print(
        f"  ratio provider/raw {streamed / raw:.2f}, {args.server}/raw {served / raw:.2f}, "
        f"batched/one-at-a-time {batched / one_at_a_time:.2f}"
    )


if __name__ == "__main__":
    main()
