"""Where the added total of a stream goes: per-chunk lateness through TokenFlow.

The mock upstream (50 chunks, 10 ms apart) runs in a thread of this process, so its send
times and the client's receive times share one clock. Requests alternate direct / through
TokenFlow (`/v1/chat/completions`, uvicorn, SQLite). Per request (medians printed):

- ttft: request start -> first content chunk at the client;
- first_sent: request start -> the mock sending chunk 0 (the gateway's time before the
  upstream answers, plus the mock's first 10 ms);
- late0 / late49 / late_p50: chunk received - chunk sent (0, last, median): constant if the
  gateway passes chunks on as they come, growing if it holds or accumulates them;
- span: the mock's own chunk 0 -> chunk 49 send times (its timer), and sleep_over: how far
  its 49 `sleep(gap)` calls overran in total;
- tail: last content chunk -> end of the response (usage, final row write, [DONE]).

    .venv/bin/python bench/chunk_lateness.py [--requests 25 --port-base 18910]
"""

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench.mock_upstream as mock_upstream  # noqa: E402
from bench.harness import ROOT, Gateway, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chunk_lateness.txt"
CHUNKS, GAP = 50, 0.01
SENT: dict[tuple[str, str], float] = {}
OVERRUN: list[float] = []


def _instrument() -> None:
    """Record the mock's send time per (model, text) and how late its gap sleeps wake."""
    chunk = mock_upstream.chunk

    def recorded(model, text, *, sent_at=None, **kwargs):
        if sent_at is not None:
            SENT[(model, text)] = sent_at
        return chunk(model, text, sent_at=sent_at, **kwargs)

    sleep = asyncio.sleep

    async def timed_sleep(delay, *args, **kwargs):
        if delay != GAP or threading.current_thread() is threading.main_thread():
            return await sleep(delay, *args, **kwargs)
        started = time.perf_counter()
        result = await sleep(delay, *args, **kwargs)
        OVERRUN.append((time.perf_counter() - started - delay) * 1000)
        return result

    mock_upstream.chunk = recorded
    mock_upstream.asyncio.sleep = timed_sleep


async def one(client: httpx.AsyncClient, url: str, key: str, model: str, upstream_model: str):
    received: dict[str, float] = {}
    OVERRUN.clear()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.time()
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        received[text] = time.time()
    ended = time.time()
    sent = [SENT[(upstream_model, f" tok{i}")] for i in range(CHUNKS)]
    late = [(received[f" tok{i}"] - sent[i]) * 1000 for i in range(CHUNKS)]
    return {
        "ttft": (received[" tok0"] - started) * 1000,
        "first_sent": (sent[0] - started) * 1000,
        "late0": late[0],
        "late49": late[-1],
        "late_p50": statistics.median(late),
        "span": (sent[-1] - sent[0]) * 1000,
        "sleep_over": sum(OVERRUN),
        "tail": (ended - received[f" tok{CHUNKS - 1}"]) * 1000,
        "total": (ended - started) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--port-base", type=int, default=0, help="use 2 ports from here")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    _instrument()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    mock = mock_upstream.MockUpstream(chunks=CHUNKS, gap=GAP)
    port = args.port_base or free_port()
    asyncio.run_coroutine_threadsafe(mock.start(port=port), loop).result()
    upstream = f"http://127.0.0.1:{port}/v1"
    gateway = Gateway(
        server="uvicorn",
        port=args.port_base + 1 if args.port_base else None,
        TOKENFLOW_MAX_STREAMS_PER_KEY="0",
    )
    gateway.manage("migrate", "--noinput")
    gateway.shell(
        "from routing.models import ModelRanking; ModelRanking.objects.create("
        "name='bench/upstream', provider='custom', upstream_model='bench?via=tokenflow', "
        f"base_url='{upstream}')"
    )
    key = gateway.api_key()
    gateway.start()
    targets = {
        "direct": (f"{upstream}/chat/completions", "none", "bench?via=direct", "bench?via=direct"),
        "tokenflow": (
            f"{gateway.url}/v1/chat/completions",
            key,
            "bench/upstream",
            "bench?via=tokenflow",
        ),
    }

    async def rounds() -> dict[str, list[dict]]:
        results: dict[str, list[dict]] = {name: [] for name in targets}
        async with httpx.AsyncClient(timeout=60) as client:
            for index in range(args.requests + 3):  # 3 warm-up rounds
                for name, target in targets.items():
                    figures = await one(client, *target)
                    if index >= 3:
                        results[name].append(figures)
        return results

    try:
        results = asyncio.run(rounds())
    finally:
        gateway.stop()
    columns = list(next(iter(results.values()))[0])
    lines = [
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"$ .venv/bin/python bench/chunk_lateness.py --requests {args.requests}",
        f"chunk lateness: {args.requests} streams per target (alternating), mock upstream "
        f"{CHUNKS} chunks {GAP * 1000:.0f} ms apart in this process; medians in ms",
        "",
        f"{'target':10s}" + "".join(f"{c:>11s}" for c in columns),
    ]
    for name, rows in results.items():
        medians = [statistics.median(row[c] for row in rows) for c in columns]
        lines.append(f"{name:10s}" + "".join(f"{m:11.2f}" for m in medians))
    direct, through = (
        {c: statistics.median(r[c] for r in results[n]) for c in columns} for n in targets
    )
    lines += [
        "",
        f"added: ttft {through['ttft'] - direct['ttft']:+.2f}, total "
        f"{through['total'] - direct['total']:+.2f}; of which before the upstream answered "
        f"{through['first_sent'] - direct['first_sent']:+.2f}, the mock's own timer (span) "
        f"{through['span'] - direct['span']:+.2f} (its sleeps overran "
        f"{through['sleep_over'] - direct['sleep_over']:+.2f} more), per-chunk passing "
        f"{through['late_p50'] - direct['late_p50']:+.2f} (last chunk "
        f"{through['late49'] - direct['late49']:+.2f}), "
        f"tail {through['tail'] - direct['tail']:+.2f}",
    ]
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
