"""Cost of the abuse and fault checks (issue 11): the code before them vs the current code.

The "before" revision (80bec47, main before the issue-11 work) is extracted with
`git archive` into a temporary directory and served by daphne from the same venv, next to
the current checkout; each gateway has its own throwaway SQLite database, the same seeded
mock model (zero latency) and two API keys: one with requests/tokens per minute set (so the
rate-limit paths run; the limits are far too large to trigger) and one without.

One client sends the requests sequentially, interleaved before/after (the order flips every
round) so machine noise hits both alike. Paths:

  chat      POST /v1/chat/completions, non-streaming, mock model
  generate  POST /api/generate, SSE, mock model, timed to the end of the stream
  list      GET /api/generations?limit=10 (authentication, permission layer, pagination)
  upstream  POST /v1/chat/completions, non-streaming, an OpenAI-compatible model behind
            bench/mock_upstream.py on loopback (the upstream guards run; the harness sets
            TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS=1)

Reports p50/p95 per path and key kind for before and after, the added p50 in ms and the
ratio, in one run.

    .venv/bin/python bench/limits.py [--requests 150] [--before 80bec47] [--out FILE]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import PY, ROOT, Gateway, pct, start_mock_upstream  # noqa: E402

BEFORE = "80bec47"
MODEL = "bench/mock"
UPSTREAM_MODEL = "bench/upstream"
# The mock model's fixed answer: 12 word tokens (12 SSE text events).
ANSWER = "one two three four five six seven eight nine ten eleven twelve"
UPSTREAM_CHUNKS = 12
PROMPT = "Say twelve words, please."
LIMITED = {"requests_per_minute": 1_000_000_000, "tokens_per_minute": 1_000_000_000}
PATHS = ("chat", "generate", "list", "upstream")
KINDS = ("limits", "no limits")

# Run in both revisions' `manage.py shell`: only fields that both ModelRanking and ApiKey
# have (80bec47 lacks the newer columns).
SETUP = """
from accounts.models import ApiKey
from routing.models import ModelRanking
ModelRanking.objects.create(
    name={model!r}, provider="mock", upstream_model="echo", rank=1, enabled=True,
    context_window=32768, options={{"response": {answer!r}, "token_delay": 0}},
)
ModelRanking.objects.create(
    name={upstream_model!r}, provider="custom", upstream_model="bench", rank=2, enabled=True,
    context_window=32768, base_url={upstream!r},
)
print("KEY", ApiKey.issue(name="bench-limits", **{limited!r})[1])
print("KEY", ApiKey.issue(name="bench-no-limits")[1])
import accounts
print("CODE", accounts.__file__)
"""


def extract(revision: str) -> Path:
    """The tree of `revision` in a fresh temporary directory (no shared git state)."""
    directory = Path(tempfile.mkdtemp(prefix=f"tokenflow-{revision}-"))
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"git archive {revision} failed")
    return directory


class Side:
    """One gateway under test and its two keys."""

    def __init__(self, name: str, gateway: Gateway) -> None:
        self.name = name
        self.gateway = gateway
        self.keys: dict[str, str] = {}
        self.code = ""
        self.error: BaseException | None = None

    def prepare(self, upstream: str) -> None:
        """Migrate, seed and serve (run in a thread: both sides start at once)."""
        try:
            self.gateway.manage("migrate", "--noinput")
            out = self.gateway.shell(
                SETUP.format(
                    model=MODEL,
                    answer=ANSWER,
                    upstream_model=UPSTREAM_MODEL,
                    upstream=upstream,
                    limited=LIMITED,
                )
            )
            keys = [line.split()[1] for line in out.splitlines() if line.startswith("KEY ")]
            self.keys = dict(zip(KINDS, keys, strict=True))
            self.code = next(line[5:] for line in out.splitlines() if line.startswith("CODE "))
            self.gateway.start()
        except subprocess.CalledProcessError as exc:
            self.error = RuntimeError(f"{exc.cmd[2:]} failed: {exc.stderr.decode()[-2000:]}")
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def log_tail(self) -> str:
        log = Path(self.gateway.dir) / "daphne.log"
        return log.read_text(errors="replace")[-3000:] if log.is_file() else ""


def tiktoken_dir(directory: Path) -> str:
    """A seeded tiktoken cache for both gateways (token counting runs offline)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings"}
    env["TOKENFLOW_VAR_DIR"] = str(directory)
    env["TOKENFLOW_MODEL_DIR"] = str(directory / "models")
    subprocess.run(
        [
            PY,
            "-c",
            "import django; django.setup(); "
            "from tokenflow_site.assets import prepare_tiktoken; prepare_tiktoken()",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return str(directory / "models")


# --- one request per path -----------------------------------------------------------------


def chat(client: httpx.Client, base: str, key: str, model: str = MODEL, answer=ANSWER) -> None:
    response = client.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    if response.status_code != 200:
        raise AssertionError(f"chat: {response.status_code} {response.text[:300]}")
    content = response.json()["choices"][0]["message"]["content"]
    if answer is not None and content.strip() != answer:
        raise AssertionError(f"chat: unexpected answer {content!r}")


def upstream(client: httpx.Client, base: str, key: str) -> None:
    chat(client, base, key, model=UPSTREAM_MODEL, answer=None)


def generate(client: httpx.Client, base: str, key: str) -> None:
    """SSE to the end of the stream; the text must be the whole answer."""
    text, last = [], None
    with client.stream(
        "POST",
        f"{base}/api/generate",
        json={"model": MODEL, "prompt": PROMPT},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        if response.status_code != 200:
            response.read()
            raise AssertionError(f"generate: {response.status_code} {response.text[:300]}")
        for line in response.iter_lines():
            if line.startswith("event: "):
                last = line[7:]
            elif line.startswith("data: ") and last == "text_chunk":
                text.append(json.loads(line[6:])["text"])
    if last != "end_stream" or "".join(text).strip() != ANSWER:
        raise AssertionError(f"generate: ended with {last!r}, text {''.join(text)!r}")


def listing(client: httpx.Client, base: str, key: str) -> None:
    response = client.get(
        f"{base}/api/generations", params={"limit": 10}, headers={"Authorization": f"Bearer {key}"}
    )
    if response.status_code != 200 or len(response.json()["results"]) != 10:
        raise AssertionError(f"list: {response.status_code} {response.text[:300]}")


REQUESTS = {"chat": chat, "generate": generate, "list": listing, "upstream": upstream}


def measure(sides: list[Side], requests: int, deadline: float) -> dict:
    """{(path, kind, side): [ms, ...]}: rounds of every path x kind, sides interleaved."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    with httpx.Client(timeout=30) as client:
        # Warm-up (connections, imports, tiktoken, first queries); it also leaves more than
        # ten generations per key, so every list request returns a full page.
        for side in sides:
            for kind in KINDS:
                for path in ("chat", "generate", "upstream") * 4 + PATHS:
                    REQUESTS[path](client, side.gateway.url, side.keys[kind])
        for round_ in range(requests):
            if time.monotonic() > deadline:
                print(f"  time budget reached after {round_} rounds", file=sys.stderr)
                break
            order = sides if round_ % 2 == 0 else sides[::-1]
            for path in PATHS:
                for kind in KINDS:
                    for side in order:
                        started = time.perf_counter()
                        REQUESTS[path](client, side.gateway.url, side.keys[kind])
                        elapsed = (time.perf_counter() - started) * 1000
                        samples.setdefault((path, kind, side.name), []).append(elapsed)
    return samples


def report(samples: dict, args, sides: list[Side], seconds: float) -> str:
    rounds = len(next(iter(samples.values())))
    lines = [
        f"Cost of the checks: {args.before} (before) vs the current code (after), "
        f"{rounds} sequential requests per path, key kind and side, interleaved; "
        f"mock model at zero latency; SQLite, local-memory cache; {seconds:.0f} s in all.",
        "",
        f"{'path':9s} {'key':10s} {'before p50':>10s} {'p95':>7s} {'after p50':>10s} "
        f"{'p95':>7s} {'added p50':>10s} {'ratio':>6s}",
    ]
    for path in PATHS:
        for kind in KINDS:
            before = samples[(path, kind, "before")]
            after = samples[(path, kind, "after")]
            b50, a50 = pct(before, 50), pct(after, 50)
            lines.append(
                f"{path:9s} {kind:10s} {b50:10.2f} {pct(before, 95):7.2f} {a50:10.2f} "
                f"{pct(after, 95):7.2f} {a50 - b50:+10.2f} {a50 / b50:5.2f}x"
            )
    lines += [
        "",
        "ms per request (client-side, time to the end of the response / stream).",
        "paths: chat = POST /v1/chat/completions (non-streaming, mock model); generate = POST "
        "/api/generate (SSE, 12 text events);",
        "list = GET /api/generations?limit=10; upstream = POST /v1/chat/completions to an "
        "OpenAI-compatible model on loopback (mock_upstream, gap 0).",
        f"limits = a key with requests_per_minute and tokens_per_minute "
        f"{LIMITED['tokens_per_minute']:,} (GCRA + token reservation run, never trigger); "
        "no limits = a key without.",
    ]
    return "\n".join(lines)


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop gateways, remove temp trees


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=150, help="rounds (requests per cell)")
    parser.add_argument("--before", default=BEFORE, help="the revision before the checks")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "limits.txt"))
    parser.add_argument("--budget", type=float, default=150, help="seconds for measuring")
    args = parser.parse_args()
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="tokenflow-limits-"))
    before_tree: Path | None = None
    mock = None
    sides: list[Side] = []
    try:
        before_tree = extract(args.before)
        mock, upstream_base = start_mock_upstream(UPSTREAM_CHUNKS, 0)
        env = {
            # Both sides: the same seeded tiktoken cache; no global rate-limit defaults.
            "TOKENFLOW_MODEL_DIR": os.environ.get("TOKENFLOW_MODEL_DIR") or tiktoken_dir(scratch),
            "TOKENFLOW_RATE_LIMIT_RPM": "0",
            "TOKENFLOW_RATE_LIMIT_TPM": "0",
            "TOKENFLOW_JSONL_LOG": "",
        }
        sides = [
            Side("before", Gateway(root=before_tree, **env)),
            Side("after", Gateway(**env)),
        ]
        threads = [threading.Thread(target=s.prepare, args=(upstream_base,)) for s in sides]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for side in sides:
            if side.error is not None:
                raise RuntimeError(
                    f"{side.name} gateway did not start: {side.error}\n{side.log_tail()}"
                ) from side.error
        assert sides[0].code.startswith(str(before_tree)), sides[0].code
        assert sides[1].code.startswith(str(ROOT)), sides[1].code
        try:
            samples = measure(sides, args.requests, time.monotonic() + args.budget)
        except Exception:
            for side in sides:
                print(f"--- {side.name} daphne.log\n{side.log_tail()}", file=sys.stderr)
            raise
    finally:
        for side in sides:
            side.gateway.stop()
            shutil.rmtree(side.gateway.dir, ignore_errors=True)
        if mock is not None:
            mock.terminate()
            mock.wait()
        if before_tree is not None:
            shutil.rmtree(before_tree, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(samples, args, sides, time.monotonic() - started)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
