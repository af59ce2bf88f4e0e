"""Peers: the mock upstream streamed direct, through TokenFlow and through the LiteLLM proxy.

One run, same client, same SSE parsing, same mock OpenAI-compatible upstream (50 chunks,
10 ms apart by default):

- direct: the mock itself;
- TokenFlow `/v1/chat/completions` on the embedded default (SQLite), served by daphne
  (`make serve`) and by uvicorn with uvloop + httptools (same ASGI app, own SQLite DB);
- the LiteLLM proxy (`litellm[proxy]`, one worker, no database), installed by this script
  into its own virtualenv (var/bench-litellm-venv; never a project dependency).

Sequential rounds alternate the targets request by request (machine noise hits all alike)
and report TTFT and total time with the added p50 over direct; then one round of C
concurrent streams per target reports wall time, TTFT p50 and errors. Ratios against the
targets of issue 14 are printed and written to bench/results/peers.txt.

    .venv/bin/python bench/peers.py [--requests 40 --concurrent 200 --port-base 18500]
    .venv/bin/python bench/peers.py --baseline main  # + that revision, same run (before/after)

`--baseline REV` also serves REV (exported with `git archive` into var/, same venv; served by
`--baseline-server`, uvicorn by default as `make serve` does) as "tokenflow-REV", so an
optimisation is measured against its baseline in one run.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import (  # noqa: E402
    ROOT,
    Gateway,
    free_port,
    pct,
    process_stop,
    start_mock_upstream,
    stream_chat,
    wait_http,
)

RESULTS = ROOT / "bench" / "results" / "peers.txt"
LITELLM_VENV = ROOT / "var" / "bench-litellm-venv"
LITELLM_SPEC = "litellm[proxy]"
LITELLM_KEY = "sk-bench-peers"


def baseline_export(revision: str) -> Path:
    """REV's tree exported under var/ (no git worktree: nothing registered in .git)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = ROOT / "var" / f"bench-baseline-{commit}"
    if not (target / "manage.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", commit], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def litellm_install() -> Path:
    """The bench-only LiteLLM virtualenv (created and filled on first use)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, LITELLM_SPEC], check=True)
    return binary


def litellm_version() -> str:
    out = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "show", "litellm"],
        capture_output=True,
        text=True,
    ).stdout
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if "Version" in line), "?"
    )


class LiteLLM:
    """The LiteLLM proxy, one worker, no database, one model pointing at the mock."""

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="litellm-bench-")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = Path(self.dir) / "config.yaml"
        self.config.write_text(
            "model_list:\n"
            "  - model_name: bench\n"
            "    litellm_params:\n"
            "      model: openai/bench\n"
            f"      api_base: {upstream}\n"
            "      api_key: none\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> "LiteLLM":
        binary = litellm_install()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", NO_DOCS="True")
        self.process = subprocess.Popen(
            [
                str(binary),
                "--config",
                str(self.config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            cwd=self.dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.dir) / "litellm.log", "wb"),  # noqa: SIM115
        )
        wait_http(f"{self.url}/health/liveliness", self.process, timeout=180)
        return self

    def stop(self) -> None:
        process_stop(self.process)


async def one(client: httpx.AsyncClient, target: tuple[str, str, str]) -> tuple[float, float, int]:
    return await stream_chat(client, *target)


async def sequential(targets: dict, requests: int, chunks: int) -> dict[str, list]:
    results: dict[str, list] = {name: [] for name in targets}
    async with httpx.AsyncClient(timeout=60) as client:
        for target in targets.values():  # warm-up (connections, imports, caches)
            for _ in range(5):
                await one(client, target)
        for _ in range(requests):
            for name, target in targets.items():
                ttft, total, got = await one(client, target)
                if got != chunks:
                    raise RuntimeError(f"{name}: {got} chunks, expected {chunks}")
                results[name].append((ttft, total))
    return results


async def concurrent(target: tuple, streams: int, chunks: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client, target) for _ in range(10)))  # warm-up
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(one(client, target) for _ in range(streams)), return_exceptions=True
        )
        wall = time.perf_counter() - started
    ok = [o for o in outcomes if not isinstance(o, BaseException) and o[2] == chunks]
    errors = [repr(o)[:200] for o in outcomes if isinstance(o, BaseException)]
    errors += [
        f"{o[2]} chunks" for o in outcomes if not isinstance(o, BaseException) and o[2] != chunks
    ]
    return {
        "wall": wall,
        "ttft_p50": pct([o[0] for o in ok], 50),
        "total_p50": pct([o[1] for o in ok], 50),
        "errors": errors,
    }


def report(args, version: str, seq: dict, conc: dict) -> list[str]:
    lines = [
        f"peers: {args.requests} sequential streams per target (alternating), {args.concurrent} "
        f"concurrent streams per target; mock upstream {args.chunks} chunks {args.gap * 1000:.0f} "
        f"ms apart ({args.pacing} pacing); LiteLLM {version} (1 worker, no database); "
        "TokenFlow on SQLite",
        "",
        f"{'target':22s} {'TTFT p50':>9s} {'total p50':>10s} {'added TTFT':>11s} "
        f"{'added total':>12s} | {'conc wall s':>11s} {'conc TTFT p50':>14s} {'errors':>7s}",
    ]
    direct_ttft = pct([r[0] for r in seq["direct"]], 50)
    direct_total = pct([r[1] for r in seq["direct"]], 50)
    added = {}
    for name in seq:
        ttft = pct([r[0] for r in seq[name]], 50)
        total = pct([r[1] for r in seq[name]], 50)
        added[name] = (ttft - direct_ttft, total - direct_total)
        c = conc[name]
        lines.append(
            f"{name:22s} {ttft:9.2f} {total:10.2f} {added[name][0]:+11.2f} {added[name][1]:+12.2f}"
            f" | {c['wall']:11.2f} {c['ttft_p50']:14.1f} {len(c['errors']):7d}"
        )
    lines.append("")
    litellm = added["litellm"]
    for name in seq:
        if not name.startswith("tokenflow"):
            continue
        mine, c = added[name], conc[name]
        checks = [
            ("added TTFT p50 / LiteLLM's", mine[0] / litellm[0], 1 / 3),
            ("added total p50 / LiteLLM's", mine[1] / litellm[1], 1 / 3),
            ("concurrent wall / LiteLLM's", c["wall"] / conc["litellm"]["wall"], 0.5),
            ("concurrent wall / direct's", c["wall"] / conc["direct"]["wall"], 2.0),
            ("concurrent errors", len(c["errors"]), 0),
        ]
        lines.append(f"{name}:")
        for label, value, target in checks:
            verdict = "ok" if value <= target else "MISSED"
            lines.append(f"  {label:30s} {value:7.3f}  (target <= {target:.3f})  {verdict}")
    if "tokenflow-uvicorn" in seq:
        d, u = added["tokenflow-daphne"], added["tokenflow-uvicorn"]
        lines.append(
            f"uvicorn vs daphne (same app): added TTFT {u[0]:+.2f} vs {d[0]:+.2f} ms, added total "
            f"{u[1]:+.2f} vs {d[1]:+.2f} ms, concurrent wall "
            f"{conc['tokenflow-uvicorn']['wall'] / conc['tokenflow-daphne']['wall']:.2f}x daphne's"
        )
    for name, c in conc.items():
        for error in c["errors"][:3]:
            lines.append(f"  {name} error: {error}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument(
        "--pacing",
        choices=("absolute", "relative"),
        default="absolute",
        help="the mock's chunk schedule: absolute (chunk i due (i+1)*gap after the head) or "
        "relative (sleep gap after each chunk: CPU contention from whoever reads the stream "
        "stretches it, which the issue's first figures included)",
    )
    parser.add_argument("--no-uvicorn", action="store_true", help="serve TokenFlow by daphne only")
    parser.add_argument("--baseline", help="also serve this git revision, same run")
    parser.add_argument(
        "--baseline-server", choices=("uvicorn", "daphne"), default="uvicorn", help="for REV"
    )
    parser.add_argument("--port-base", type=int, default=0, help="use 5 ports from here")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    ports = [args.port_base + i if args.port_base else None for i in range(5)]
    litellm_install()
    version = litellm_version()
    mock, upstream = start_mock_upstream(args.chunks, args.gap, port=ports[0], pacing=args.pacing)
    # One key opens all C streams: lift the per-key cap on open streams (64 by default).
    env = {"TOKENFLOW_MAX_STREAMS_PER_KEY": "0"}
    servers = {}
    if args.baseline:
        root = baseline_export(args.baseline)
        servers[f"tokenflow-{args.baseline}"] = Gateway(
            root, server=args.baseline_server, port=ports[4], **env
        )
    servers["tokenflow-daphne"] = Gateway(port=ports[1], **env)
    if not args.no_uvicorn:
        servers["tokenflow-uvicorn"] = Gateway(server="uvicorn", port=ports[2], **env)
    litellm = LiteLLM(upstream, port=ports[3])
    try:
        targets = {"direct": (f"{upstream}/chat/completions", "none", "bench")}
        for name, gateway in servers.items():
            gateway.manage("migrate", "--noinput")
            gateway.shell(
                "from routing.models import ModelRanking; ModelRanking.objects.create("
                "name='bench/upstream', provider='custom', upstream_model='bench', "
                f"base_url='{upstream}')"
            )
            key = gateway.api_key()
            gateway.start()
            targets[name] = (f"{gateway.url}/v1/chat/completions", key, "bench/upstream")
        litellm.start()
        targets["litellm"] = (f"{litellm.url}/v1/chat/completions", LITELLM_KEY, "bench")
        seq = asyncio.run(sequential(targets, args.requests, args.chunks))
        conc = {
            name: asyncio.run(concurrent(target, args.concurrent, args.chunks))
            for name, target in targets.items()
        }
    finally:
        for gateway in servers.values():
            gateway.stop()
        litellm.stop()
        mock.terminate()
        mock.wait()
    lines = report(args, version, seq, conc)
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.write_text(
        f"# {stamp}\n$ .venv/bin/python bench/peers.py {' '.join(sys.argv[1:])}\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
