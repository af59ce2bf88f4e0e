"""Concurrency: N SSE streams and N WebSocket streams at once against the mock provider.

Reports errors, chunks/s, and how late chunks arrive against the provider's fixed schedule
(lateness of chunk i = arrival_i - i * gap - min over the stream of the same; target: p95
<= 20 ms) and
the inter-arrival gap error. Client and server share the same 2 cores, so the client's own
CPU use is part of the distortion.

    .venv/bin/python bench/concurrency.py [--streams 500 --tokens 30 --gap 0.05]
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Gateway, pct  # noqa: E402

MODEL = "bench/mock"


class Stats:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.arrivals: list[list[float]] = []
        self.in_flight = 0
        self.peak = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1


async def sse_stream(
    client: httpx.AsyncClient, url: str, key: str, stats: Stats, delay: float
) -> None:
    await asyncio.sleep(delay)
    times: list[float] = []
    ended = False
    try:
        async with client.stream(
            "POST",
            f"{url}/api/generate",
            json={"model": MODEL, "prompt": "go"},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            if response.status_code != 200:
                stats.errors.append(f"sse status {response.status_code}")
                return
            stats.enter()
            try:
                async for line in response.aiter_lines():
                    if line == "event: text_chunk":
                        times.append(time.perf_counter())
                    elif line == "event: end_stream":
                        ended = True
                    elif line == "event: error":
                        stats.errors.append("sse error event")
            finally:
                stats.leave()
    except Exception as exc:  # noqa: BLE001 - every failure counts as an error
        stats.errors.append(f"sse {type(exc).__name__}: {exc}")
        return
    if not ended:
        stats.errors.append("sse stream without end_stream")
    stats.arrivals.append(times)


async def ws_stream(url: str, key: str, stats: Stats, delay: float) -> None:
    await asyncio.sleep(delay)
    times: list[float] = []
    ws_url = url.replace("http://", "ws://") + f"/ws/generate/?api_key={key}"
    try:
        async with websockets.connect(
            ws_url, origin=url, open_timeout=120, close_timeout=10, max_queue=None
        ) as socket:
            stats.enter()
            try:
                await socket.send(json.dumps({"type": "generate", "model": MODEL, "prompt": "go"}))
                while True:
                    message = json.loads(await socket.recv())
                    if message["type"] == "token":
                        times.append(time.perf_counter())
                    elif message["type"] == "end":
                        break
                    elif message["type"] == "error":
                        stats.errors.append(f"ws error {message.get('code')}")
                        return
            finally:
                stats.leave()
    except Exception as exc:  # noqa: BLE001
        stats.errors.append(f"ws {type(exc).__name__}: {exc}")
        return
    stats.arrivals.append(times)


def report(name: str, stats: Stats, wall: float, args) -> None:
    chunks = sum(len(times) for times in stats.arrivals)
    lateness, gap_error = [], []
    for times in stats.arrivals:
        # Offset of each chunk from the sender's schedule; the stream's smallest offset is
        # its transit time, anything above it is delay added on the way (queues, buffering).
        offsets = [arrival - index * args.gap for index, arrival in enumerate(times)]
        base = min(offsets, default=0)
        for index, offset in enumerate(offsets):
            lateness.append((offset - base) * 1000)
            if index:
                gap_error.append(abs(times[index] - times[index - 1] - args.gap) * 1000)
    complete = sum(len(times) == args.tokens for times in stats.arrivals)
    print(
        f"  {name}: {args.streams} streams, peak {stats.peak} concurrent, "
        f"{complete} complete, {len(stats.errors)} errors, wall {wall:.1f} s"
    )
    print(f"       {chunks} chunks, {chunks / wall:.0f} chunks/s")
    print(
        f"       lateness vs schedule ms: p50 {pct(lateness, 50):.1f}  p95 {pct(lateness, 95):.1f}"
        f"  p99 {pct(lateness, 99):.1f}  (target p95 <= 20)"
    )
    print(
        f"       |gap - {args.gap * 1000:.0f} ms| ms: p50 {pct(gap_error, 50):.1f}  "
        f"p95 {pct(gap_error, 95):.1f}"
    )
    if stats.errors:
        print(f"       first errors: {stats.errors[:3]}")


async def run(args, gateway: Gateway, key: str) -> None:
    limits = httpx.Limits(max_connections=args.streams + 10, max_keepalive_connections=0)
    step = args.ramp / args.streams
    for mode in args.modes:
        stats = Stats()
        started = time.perf_counter()
        if mode == "sse":
            async with httpx.AsyncClient(timeout=300, limits=limits) as client:
                await asyncio.gather(
                    *(
                        sse_stream(client, gateway.url, key, stats, i * step)
                        for i in range(args.streams)
                    )
                )
        elif mode == "ws":
            await asyncio.gather(
                *(ws_stream(gateway.url, key, stats, i * step) for i in range(args.streams))
            )
        else:  # both at once
            async with httpx.AsyncClient(timeout=300, limits=limits) as client:
                await asyncio.gather(
                    *(
                        sse_stream(client, gateway.url, key, stats, i * step)
                        for i in range(args.streams)
                    ),
                    *(ws_stream(gateway.url, key, stats, i * step) for i in range(args.streams)),
                )
        report(mode, stats, time.perf_counter() - started, args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to open all streams")
    parser.add_argument("--gap", type=float, default=0.05)
    parser.add_argument("--modes", nargs="+", default=["sse", "ws"])
    args = parser.parse_args()
    gateway = Gateway()
    response = " ".join(f"w{i}" for i in range(args.tokens))
    try:
        gateway.manage("migrate", "--noinput")
        gateway.shell(
            "from routing.models import ModelRanking; ModelRanking.objects.create("
            f"name='{MODEL}', provider='mock', upstream_model='bench', "
            f"options={{'response': '{response}', 'token_delay': {args.gap}}})"
        )
        key = gateway.api_key()
        gateway.start()
        print(
            f"concurrency: mock provider, {args.tokens} tokens every {args.gap * 1000:.0f} ms "
            f"per stream, streams opened over {args.ramp:.0f} s, one daphne process, "
            "client on the same machine"
        )
        asyncio.run(run(args, gateway, key))
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
