"""Concurrency: N SSE streams and N WebSocket streams at once against the mock provider.

Reports errors, chunks/s, and how late chunks arrive against the provider's fixed schedule
(lateness of chunk i = arrival_i - i * gap - min over the stream of the same; target: p95
<= 20 ms) and
the inter-arrival gap error. Client and server share the same 2 cores, so the client's own
CPU use is part of the distortion.

    .venv/bin/python bench/concurrency.py [--streams 500 --tokens 30 --gap 0.05]

With `--processes N` the same rounds run twice in one run, on PostgreSQL + Redis (a
throwaway database; BENCH_DATABASE_URL / BENCH_REDIS_URL, default the local ones): first
behind `make serve-prod`'s gunicorn with 1 uvicorn worker, then with N workers behind the
same port, and the ratios are printed (docs/scale-out.md):

    .venv/bin/python bench/concurrency.py --processes 2 \\
        --out bench/results/concurrency_processes.txt
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import PY, Gateway, pct, wait_http  # noqa: E402

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


def report(name: str, stats: Stats, wall: float, args) -> dict[str, float]:
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
    return {
        "errors": len(stats.errors),
        "chunks_per_s": chunks / wall,
        "p95": pct(lateness, 95),
        "p50": pct(lateness, 50),
    }


async def run(args, gateway: Gateway, key: str) -> dict[str, dict[str, float]]:
    figures = {}
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
        figures[mode] = report(mode, stats, time.perf_counter() - started, args)
    return figures


class ProcessesGateway(Gateway):
    """TokenFlow as `make serve-prod` serves it: gunicorn + N uvicorn workers on one port,
    on PostgreSQL + Redis (the stores several processes need)."""

    def __init__(self, database_url: str, redis_url: str, **env: str) -> None:
        super().__init__(**env)
        self.env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            TOKENFLOW_CACHE_PREFIX=f"bench-{os.getpid()}",
            PROMETHEUS_MULTIPROC_DIR=str(Path(self.dir) / "metrics"),
        )
        # The offline assets (tiktoken files) `make serve` prepared, not the temp var/'s.
        self.env.setdefault("TOKENFLOW_MODEL_DIR", str(self.root / "var" / "models"))
        (Path(self.dir) / "metrics").mkdir()
        if os.environ.get("BENCH_PORT"):  # a port of your own on a shared machine
            self.port = int(os.environ["BENCH_PORT"])
            self.url = f"http://127.0.0.1:{self.port}"

    def start(self, processes: int = 1) -> "ProcessesGateway":
        self.process = subprocess.Popen(
            [
                PY,
                "-m",
                "gunicorn",
                "-c",
                "python:tokenflow_site.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(processes),
                "tokenflow_site.asgi:application",
            ],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.dir) / f"gunicorn-{processes}.log", "wb"),  # noqa: SIM115
        )
        wait_http(f"{self.url}/healthz", self.process)
        time.sleep(3)  # every worker up, not just the first one
        return self


@contextlib.contextmanager
def throwaway_database(url: str):
    """A fresh PostgreSQL database next to `url`'s; dropped afterwards."""
    import psycopg
    from psycopg import sql

    base, _, _ = url.rpartition("/")
    name = f"tokenflow_bench_{os.getpid()}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def seed(gateway: Gateway, args) -> str:
    response = " ".join(f"w{i}" for i in range(args.tokens))
    gateway.manage("migrate", "--noinput")
    gateway.shell(
        "from routing.models import ModelRanking; ModelRanking.objects.create("
        f"name='{MODEL}', provider='mock', upstream_model='bench', "
        f"options={{'response': '{response}', 'token_delay': {args.gap}}})"
    )
    return gateway.api_key()


def main_processes(args) -> None:
    """1 process, then N, behind gunicorn on PostgreSQL + Redis, in one run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still stop servers, drop the DB
    database = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    out = io.StringIO()
    with throwaway_database(database) as url, contextlib.redirect_stdout(Tee(sys.stdout, out)):
        print(
            f"concurrency: mock provider, {args.tokens} tokens every {args.gap * 1000:.0f} ms "
            f"per stream, {args.streams} streams per transport opened over {args.ramp:.0f} s; "
            f"gunicorn + uvicorn workers (make serve-prod) on PostgreSQL + Redis; "
            "client on the same machine"
        )
        results = {}
        gateway = ProcessesGateway(url, redis, TOKENFLOW_MAX_STREAMS_PER_KEY="0")
        key = seed(gateway, args)
        for processes in (1, args.processes):
            try:
                gateway.start(processes)
                # Warm every worker (imports, connections, tiktoken) outside the figures.
                warm = argparse.Namespace(**{**vars(args), "streams": 20 * processes})
                with contextlib.redirect_stdout(io.StringIO()):
                    asyncio.run(run(warm, gateway, key))
                print(f"{processes} process{'es' if processes > 1 else ''} behind one port:")
                results[processes] = asyncio.run(run(args, gateway, key))
            finally:
                gateway.stop()
        one, many = results[1], results[args.processes]
        print(f"{args.processes} processes vs 1 (same run):")
        for mode in args.modes:
            print(
                f"  {mode}: errors {one[mode]['errors']} -> {many[mode]['errors']}; "
                f"lateness p95 {one[mode]['p95']:.1f} -> {many[mode]['p95']:.1f} ms "
                f"({many[mode]['p95'] / max(one[mode]['p95'], 1e-9):.2f}x); "
                f"p50 {one[mode]['p50']:.1f} -> {many[mode]['p50']:.1f} ms; "
                f"chunks/s {one[mode]['chunks_per_s']:.0f} -> {many[mode]['chunks_per_s']:.0f} "
                f"({many[mode]['chunks_per_s'] / max(one[mode]['chunks_per_s'], 1e-9):.2f}x)"
            )
    if args.out:
        command = " ".join(["$ .venv/bin/python", *sys.argv])
        Path(args.out).write_text(f"{command}\n{out.getvalue()}")


class Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to open all streams")
    parser.add_argument("--gap", type=float, default=0.05)
    parser.add_argument("--modes", nargs="+", default=["sse", "ws"])
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="N > 1: 1 process then N behind one port (gunicorn, PostgreSQL + Redis)",
    )
    parser.add_argument("--out", default="", help="also write the report here")
    args = parser.parse_args()
    if args.processes > 1:
        main_processes(args)
        return
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
