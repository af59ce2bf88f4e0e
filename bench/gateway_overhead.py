"""Gateway overhead: a mock OpenAI-compatible upstream streamed directly vs through TokenFlow.

Both paths speak /v1/chat/completions (same client, same SSE parsing); requests alternate
direct/gateway so machine noise hits both alike. Reports TTFT and total time, the added
p50/p95 milliseconds and the ratio.

    .venv/bin/python bench/gateway_overhead.py [--requests 40 --chunks 50 --gap 0.01]
"""

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Gateway, pct, start_mock_upstream, stream_chat, summary  # noqa: E402


async def measure(args, upstream: str, gateway: Gateway, key: str) -> dict[str, list]:
    results: dict[str, list] = {"direct": [], "gateway": []}
    targets = {
        "direct": (f"{upstream}/chat/completions", "none", "bench"),
        "gateway": (f"{gateway.url}/v1/chat/completions", key, "bench/upstream"),
    }
    async with httpx.AsyncClient(timeout=60) as client:
        for url, token, model in targets.values():  # warm-up (connections, imports)
            for _ in range(3):
                await stream_chat(client, url, token, model)
        for _ in range(args.requests):
            for name, (url, token, model) in targets.items():
                ttft, total, chunks = await stream_chat(client, url, token, model)
                assert chunks == args.chunks, (name, chunks)
                results[name].append((ttft, total))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.01)
    args = parser.parse_args()
    mock, upstream = start_mock_upstream(args.chunks, args.gap)
    gateway = Gateway()
    try:
        gateway.manage("migrate", "--noinput")
        gateway.shell(
            "from routing.models import ModelRanking; ModelRanking.objects.create("
            "name='bench/upstream', provider='custom', upstream_model='bench', "
            f"base_url='{upstream}')"
        )
        key = gateway.api_key()
        gateway.start()
        results = asyncio.run(measure(args, upstream, gateway, key))
    finally:
        gateway.stop()
        mock.terminate()
        mock.wait()
    print(
        f"gateway overhead: {args.requests} sequential streams per path, {args.chunks} chunks, "
        f"gap {args.gap * 1000:.0f} ms (nominal stream {args.chunks * args.gap * 1000:.0f} ms)"
    )
    for metric, index in (("TTFT ms", 0), ("total ms", 1)):
        direct = [r[index] for r in results["direct"]]
        through = [r[index] for r in results["gateway"]]
        print(f"  {metric:8s} direct : {summary(direct)}")
        print(f"  {metric:8s} gateway: {summary(through)}")
        for p in (50, 95):
            added = pct(through, p) - pct(direct, p)
            ratio = pct(through, p) / pct(direct, p)
            print(f"  {metric:8s} p{p}: added {added:7.2f} ms, ratio {ratio:5.2f}x")


if __name__ == "__main__":
    main()
