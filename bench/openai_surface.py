"""Benchmark the OpenAI surface with the official client against a throwaway TokenFlow.

    .venv/bin/python bench/openai_surface.py       (writes bench/results/openai_surface.txt)

1. /v1/embeddings on local/minilm: latency per call and inputs per second for batches of
   1, 16 and 128 short sentences (after a warm-up call that loads MiniLM).
2. Tool-call pass-through: p50 latency of a non-streaming chat completion that answers
   with two parallel tool calls, straight to the scripted upstream vs through TokenFlow
   (validation, capability check, persistence, tool-call assembly), and the same streamed
   (time to the last chunk).
"""

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from bench.harness import Gateway, pct, start_mock_upstream  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "openai_surface.txt"
SENTENCES = [f"Sentence number {i} talks about topic {i % 7} in a few words." for i in range(128)]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def timed(call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    upstream, base = start_mock_upstream(chunks=3, gap=0)
    gateway = Gateway()
    try:
        gateway.start()
        gateway.shell(
            "from routing.models import ModelRanking; ModelRanking.objects.create("
            "name='bench/tools', provider='custom', upstream_model='bench?tool_calls=2', "
            f"base_url='{base}', supports_tools=True)"
        )
        key = gateway.api_key()
        via = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)
        direct = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=60)

        say(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        say("== /v1/embeddings, local/minilm (384 dimensions)")
        via.embeddings.create(model="local/minilm", input="warm-up")
        for size in (1, 16, 128):
            batch = SENTENCES[:size]
            samples = timed(
                lambda b=batch: via.embeddings.create(model="local/minilm", input=b), 10
            )
            p50 = pct(samples, 50)
            say(
                f"batch {size:4d}: p50 {p50:8.1f} ms/call  p95 {pct(samples, 95):8.1f} ms  "
                f"{size / p50 * 1000:8.1f} inputs/s"
            )

        say("")
        say("== chat completion answering 2 parallel tool calls (50 calls each, p50 ms)")
        messages = [{"role": "user", "content": "weather and time?"}]

        def chat(client, model, stream=False):
            def call():
                result = client.chat.completions.create(
                    model=model, messages=messages, tools=TOOLS, stream=stream
                )
                if stream:
                    chunks = list(result)
                    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
                else:
                    assert len(result.choices[0].message.tool_calls) == 2

            return call

        chat(via, "bench/tools")()
        for stream in (False, True):
            direct_ms = timed(chat(direct, "bench?tool_calls=2", stream), 50)
            via_ms = timed(chat(via, "bench/tools", stream), 50)
            label = "stream    " if stream else "non-stream"
            say(
                f"{label}: direct p50 {pct(direct_ms, 50):6.1f}  via TokenFlow p50 "
                f"{pct(via_ms, 50):6.1f}  overhead p50 {pct(via_ms, 50) - pct(direct_ms, 50):6.1f}"
                f"  (mean via {statistics.fmean(via_ms):6.1f})"
            )
        via.close()
        direct.close()
        say(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    finally:
        gateway.stop()
        upstream.terminate()
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
