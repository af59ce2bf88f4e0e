"""Shared benchmark plumbing: a throwaway TokenFlow (daphne + its own SQLite DB), percentiles."""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 50):8.2f}  p95 {pct(values, 95):8.2f}  "
        f"mean {statistics.fmean(values) if values else float('nan'):8.2f}"
    )


def wait_http(url: str, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


class Gateway:
    """A fresh TokenFlow: temp SQLite DB, migrated, seeded by `setup(django)`, served by daphne
    (or `server="uvicorn"`: uvicorn with uvloop and httptools, same ASGI app).

    `root` is the checkout whose manage.py and ASGI app run (default: this repository), so a
    bench can serve another revision (a `git worktree`) with the same venv side by side."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        server: str = "daphne",
        port: int | None = None,
        **env: str,
    ) -> None:
        self.root = Path(root) if root is not None else ROOT
        self.server = server
        self.dir = tempfile.mkdtemp(prefix="tokenflow-bench-")
        self.env = {
            **os.environ,
            # The embedded default (SQLite in WAL mode) under a throwaway var/ directory.
            "TOKENFLOW_VAR_DIR": self.dir,
            # ...but the checkout's prepared assets (tiktoken files, models): offline.
            "TOKENFLOW_MODEL_DIR": os.environ.get(
                "TOKENFLOW_MODEL_DIR", str(ROOT / "var" / "models")
            ),
            "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings",
            "LOG_LEVEL": "WARNING",
            # The benches' mock upstreams listen on loopback.
            "TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS": "1",
            **env,
        }
        self.env.pop("REDIS_URL", None)
        self.env.pop("DATABASE_URL", None)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [PY, "manage.py", *args], cwd=self.root, env=self.env, check=True, capture_output=True
        ).stdout.decode()

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code).strip()

    def start(self) -> "Gateway":
        self.manage("migrate", "--noinput")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.dir) / "daphne.log", "wb"),  # noqa: SIM115
        )
        wait_http(f"{self.url}/healthz", self.process)
        return self

    def command(self) -> list[str]:
        if self.server == "uvicorn":
            return [
                PY,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--backlog",
                "2048",
                "--no-access-log",
                "--log-level",
                "warning",
                "tokenflow_site.asgi:application",
            ]
        return [
            PY,
            "-m",
            "daphne",
            # A deep accept backlog: hundreds of clients connect at once.
            "-e",
            f"tcp:port={self.port}:interface=127.0.0.1:backlog=2048",
            # Handshakes queue behind hundreds of others: daphne's 5 s default is short.
            "--websocket_connect_timeout",
            "60",
            "tokenflow_site.asgi:application",
        ]

    def api_key(self) -> str:
        return self.shell(
            "from accounts.models import ApiKey; print(ApiKey.issue(name='bench')[1])"
        ).splitlines()[-1]

    def stop(self) -> None:
        process_stop(self.process)


def start_mock_upstream(
    chunks: int, gap: float, port: int | None = None, pacing: str = "relative"
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    process = subprocess.Popen(
        [
            PY,
            str(ROOT / "bench" / "mock_upstream.py"),
            "--port",
            str(port),
            "--chunks",
            str(chunks),
            "--gap",
            str(gap),
            "--pacing",
            pacing,
        ],
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(base + "/models", process)
    return process, base


async def stream_chat(client, url: str, key: str, model: str) -> tuple[float, float, int]:
    """(TTFT ms, total ms, content chunks) of one streamed /chat/completions; an error
    event or a stream without content raises."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.perf_counter()
    ttft, chunks = None, 0
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(f"error event: {data['error']}")
            choices = data.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError("no content chunk")
    return ttft * 1000, (time.perf_counter() - started) * 1000, chunks


def process_stop(process: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
