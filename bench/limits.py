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

    .venv/bin/python bench/limits.py [--requests 200] [--budget 100] [--profile 40] [--sql]
        [--before 80bec47] [--out FILE]
"""

import argparse
import json
import os
import re
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
        ["git", "archive", "--format=tar", revision],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    untar = subprocess.run(["tar", "-x", "-C", str(directory)], stdin=archive.stdout)
    archive.stdout.close()
    error = archive.stderr.read().decode()
    if archive.wait() != 0 or untar.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(
            f"git archive {revision} failed ({error.strip()}); a shallow clone needs "
            "`git fetch --unshallow` (or pass --before REV)"
        )
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


def spec(path: str, key: str) -> tuple[str, str, dict]:
    """(method, URL path, httpx keyword arguments) of one request on `path`."""
    headers = {"Authorization": f"Bearer {key}"}
    if path in ("chat", "upstream"):
        model = MODEL if path == "chat" else UPSTREAM_MODEL
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
        return "POST", "/v1/chat/completions", {"json": body, "headers": headers}
    if path == "generate":
        body = {"model": MODEL, "prompt": PROMPT}
        return "POST", "/api/generate", {"json": body, "headers": headers}
    return "GET", "/api/generations", {"params": {"limit": 10}, "headers": headers}


def check(path: str, response: httpx.Response) -> None:
    """The answer must be the real thing (a fast error would flatter a side)."""
    if response.status_code != 200:
        raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
    if path in ("chat", "upstream"):
        content = response.json()["choices"][0]["message"]["content"]
        if path == "chat" and content.strip() != ANSWER:
            raise AssertionError(f"chat: unexpected answer {content!r}")
        if path == "upstream" and not content:
            raise AssertionError("upstream: empty answer")
    elif path == "generate":  # SSE, read to the end of the stream
        text, last = [], None
        for line in response.text.splitlines():
            if line.startswith("event: "):
                last = line[7:]
            elif line.startswith("data: ") and last == "text_chunk":
                text.append(json.loads(line[6:])["text"])
        if last != "end_stream" or "".join(text).strip() != ANSWER:
            raise AssertionError(f"generate: ended with {last!r}, text {''.join(text)!r}")
    elif len(response.json()["results"]) != 10:
        raise AssertionError(f"list: not a full page: {response.text[:300]}")


def send(client: httpx.Client, base: str, path: str, key: str) -> None:
    method, url, kwargs = spec(path, key)
    check(path, client.request(method, base + url, **kwargs))


def cpu_ms(pid: int) -> float:
    """CPU time of every thread of `pid` so far (Linux schedstat, ns precision), in ms."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that just ended
    return total / 1e6


def measure(sides: list[Side], requests: int, deadline: float) -> dict:
    """{(path, kind, side): [(wall ms, server CPU ms), ...]}, one entry per round.

    Server CPU of a request = the daphne process's CPU from the start of that request to
    the start of the side's next one (so work done after the response counts too)."""
    samples: dict[tuple[str, str, str], list[list[float]]] = {}
    with httpx.Client(timeout=30) as client:
        # Warm-up (connections, imports, tiktoken, first queries); it also leaves more than
        # ten generations per key, so every list request returns a full page.
        for side in sides:
            for kind in KINDS:
                for path in ("chat", "generate", "upstream") * 4 + PATHS:
                    send(client, side.gateway.url, path, side.keys[kind])
        open_sample: dict[str, tuple[list[float], float]] = {}

        def cpu_mark(side: Side, sample: list[float] | None) -> None:
            now = cpu_ms(side.gateway.process.pid)
            if side.name in open_sample:
                previous, cpu_then = open_sample.pop(side.name)
                previous.append(now - cpu_then)
            if sample is not None:
                open_sample[side.name] = (sample, now)

        for round_ in range(requests):
            if time.monotonic() > deadline:
                print(f"  time budget reached after {round_} rounds", file=sys.stderr)
                break
            order = sides if round_ % 2 == 0 else sides[::-1]
            for path in PATHS:
                for kind in KINDS:
                    for side in order:
                        sample: list[float] = []
                        cpu_mark(side, sample)
                        started = time.perf_counter()
                        send(client, side.gateway.url, path, side.keys[kind])
                        sample.insert(0, (time.perf_counter() - started) * 1000)
                        samples.setdefault((path, kind, side.name), []).append(sample)
        time.sleep(0.5)  # let the last requests' trailing work finish
        for side in sides:
            cpu_mark(side, None)
    return samples


def report(samples: dict, args, seconds: float) -> str:
    rounds = len(next(iter(samples.values())))
    head = f"{'path':9s} {'key':10s} {'before p50':>10s} {'p95':>7s} {'after p50':>10s} {'p95':>7s}"
    lines = [
        f"Cost of the checks: {args.before} (before) vs the current code (after), "
        f"{rounds} sequential requests per path, key kind and side, interleaved; "
        f"mock model at zero latency; SQLite, local-memory cache; {seconds:.0f} s in all.",
        "",
        "Latency, ms per request (client-side, to the end of the response / stream):",
        f"{head} {'added p50':>10s} {'ratio':>6s} {'paired':>7s}",
    ]
    cpu_lines = [
        "",
        "Server CPU, ms per request (all daphne threads, from one request's start to the "
        "next; far less noisy than wall time on a shared machine):",
        f"{head} {'added p50':>10s} {'ratio':>6s}",
    ]
    for path in PATHS:
        for kind in KINDS:
            before = samples[(path, kind, "before")]
            after = samples[(path, kind, "after")]
            for index, out in ((0, lines), (1, cpu_lines)):
                b = [sample[index] for sample in before]
                a = [sample[index] for sample in after]
                b50, a50 = pct(b, 50), pct(a, 50)
                row = (
                    f"{path:9s} {kind:10s} {b50:10.2f} {pct(b, 95):7.2f} {a50:10.2f} "
                    f"{pct(a, 95):7.2f} {a50 - b50:+10.2f} {a50 / b50:5.2f}x"
                )
                if index == 0:  # median of the per-round differences (same moment, both)
                    row += f" {pct([y - x for x, y in zip(b, a, strict=True)], 50):+7.2f}"
                out.append(row)
    lines += cpu_lines
    lines += [
        "",
        "added p50 = after p50 - before p50; paired = the median of after - before within a "
        "round (the two requests run back to back).",
        "paths: chat = POST /v1/chat/completions (non-streaming, mock model); generate = POST "
        "/api/generate (SSE, 12 text events);",
        "list = GET /api/generations?limit=10; upstream = POST /v1/chat/completions to an "
        "OpenAI-compatible model on loopback (mock_upstream, gap 0).",
        f"limits = a key with requests_per_minute and tokens_per_minute "
        f"{LIMITED['tokens_per_minute']:,} (GCRA + token reservation run, never trigger); "
        "no limits = a key without.",
    ]
    return "\n".join(lines)


# --- where the time goes: an in-process profile of one side and path ----------------------


WAITS = {
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'acquire' of '_thread.lock' objects>",
    "<time.sleep>",
}
PROJECT_APPS = {"accounts", "routing", "tokenflow_site", "compression", "pipelines", "batches"}


def _group(file: str, func: str, tree: str) -> str:
    """A profile entry's bucket: a library package, the project file, a stdlib module or a
    built-in (C) function."""
    if file == "~":
        return re.sub(r" at 0x[0-9a-f]+", "", func.replace("built-in method ", ""))
    if "site-packages/" in file:
        parts = file.split("site-packages/", 1)[1].split("/")
        return "/".join(parts[:2]) if parts[0] in ("django", "rest_framework") else parts[0]
    if file.startswith(tree + "/"):
        return file[len(tree) + 1 :]
    if "/lib/python3" in file:
        return "stdlib " + file.split("/lib/python3", 1)[1].split("/", 2)[1]
    return file


def profile_worker(config: dict) -> None:
    """In a subprocess (cwd = the side's tree, env = its gateway's): load that tree's ASGI
    app, send `requests` requests of one path in-process (httpx.ASGITransport) under cProfile
    on every thread (ORM calls run in executor threads), print a JSON summary."""
    import asyncio
    import cProfile
    import pstats

    tree, path, key, requests = config["tree"], config["path"], config["key"], config["requests"]
    _use_tree(tree)
    profiling = threading.Event()
    profiles: list[cProfile.Profile] = []
    local = threading.local()

    def hook(frame, event, arg) -> None:  # every new thread: a profiler while profiling
        if profiling.is_set() and getattr(local, "profile", None) is None:
            local.profile = cProfile.Profile(time.thread_time)
            profiles.append(local.profile)
            local.profile.enable()

    threading.setprofile(hook)
    from django.db.backends import utils as db_utils

    import accounts
    from tokenflow_site.asgi import application

    assert accounts.__file__.startswith(tree + "/"), accounts.__file__
    queries = [0]
    statements: list[str] = []
    for name in ("execute", "executemany"):
        original = getattr(db_utils.CursorWrapper, name)

        def counted(self, sql, *args, _original=original, **kwargs):
            queries[0] += 1
            statements.append(sql)
            return _original(self, sql, *args, **kwargs)

        setattr(db_utils.CursorWrapper, name, counted)

    async def run() -> tuple[float, int]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            method, url, kwargs = spec(path, key)
            for _ in range(10):  # warm-up
                check(path, await client.request(method, url, **kwargs))
            main = cProfile.Profile(time.thread_time)
            profiles.append(main)
            profiling.set()
            first_query, started = queries[0], time.perf_counter()
            main.enable()
            for _ in range(requests):
                statements.clear()
                check(path, await client.request(method, url, **kwargs))
            main.disable()
            elapsed = time.perf_counter() - started
            profiling.clear()
            await asyncio.sleep(0.2)  # trailing work after the responses
            return elapsed, queries[0] - first_query

    elapsed, query_count = asyncio.run(run())
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    groups: dict[str, float] = {}
    functions: dict[str, list[float]] = {}
    hops = 0
    for (file, _line, func), (_cc, calls, self_s, cum_s, _callers) in stats.stats.items():
        bucket = _group(file, func, tree)
        if bucket in WAITS:  # blocked, not working (the timer is CPU time; belt and braces)
            continue
        groups[bucket] = groups.get(bucket, 0.0) + self_s * 1000 / requests
        if bucket == "asgiref" and func == "thread_handler":
            hops += calls
        if bucket.split("/")[0] in PROJECT_APPS and bucket.endswith(".py"):
            entry = functions.setdefault(f"{bucket}:{func}", [0.0, 0.0, 0.0])
            entry[0] += cum_s * 1000 / requests
            entry[1] += self_s * 1000 / requests
            entry[2] += calls / requests
    summary = {
        "wall_ms": elapsed * 1000 / requests,
        "queries": query_count / requests,
        "hops": hops / requests,
        "sql": list(statements),
        "cpu_ms": sum(groups.values()),
        "groups": groups,
        "functions": functions,
    }
    print("PROFILE " + json.dumps(summary))


def _use_tree(tree: str) -> None:
    """Import the project from `tree` (this file's own checkout leaves sys.path)."""
    own = {str(ROOT), str(ROOT / "bench"), ""}
    sys.path[:] = [tree] + [entry for entry in sys.path if entry not in own]
    os.environ["DJANGO_SETTINGS_MODULE"] = "tokenflow_site.settings"


def pieces_worker(config: dict) -> None:
    """In a subprocess like profile_worker: time each check on its own (µs per call, the
    median of 7 batches), for whichever of them this tree has; print a JSON summary."""
    import statistics

    _use_tree(config["tree"])
    import django

    django.setup()
    from django.test import RequestFactory

    from accounts import middleware, ratelimit
    from accounts.models import ApiKey

    key = ApiKey.objects.get(name="bench-limits")
    raw = config["key"]
    factory = RequestFactory()
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}

    def authenticate() -> None:  # middleware: key lookup, authorization, rate limit
        request = factory.post("/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert middleware._authenticate(request) is None

    pieces = {
        "middleware _authenticate (key, authorize, rpm)": authenticate,
        "rate_limit_hit (rpm check)": lambda: ratelimit.rate_limit_hit(api_key=key),
    }
    if hasattr(ratelimit, "tokens_reserve"):
        from routing.serializers import ChatCompletionRequestSerializer, GenerateRequestSerializer
        from routing.tokens import count_message_tokens
        from tokenflow_site.api import validate

        def reserve_settle() -> None:
            reserved = ratelimit.tokens_reserve(api_key=key, tokens=300)
            ratelimit.tokens_settle(api_key=key, reserved=reserved, used=30)

        def slot() -> None:
            assert ratelimit.streams_acquire(api_key=key, stream_id="bench")
            ratelimit.streams_release(api_key_id=key.pk, stream_id="bench")

        generate_body = {"model": MODEL, "prompt": PROMPT}
        pieces |= {
            "tokens_reserve + tokens_settle": reserve_settle,
            "streams_acquire + streams_release": slot,
            "count_message_tokens (prompt)": lambda: count_message_tokens(body["messages"]),
            "validate ChatCompletionRequestSerializer": lambda: validate(
                ChatCompletionRequestSerializer, body
            ),
            "validate GenerateRequestSerializer": lambda: validate(
                GenerateRequestSerializer, generate_body
            ),
        }
    results = {}
    for name, piece in pieces.items():
        for _ in range(20):
            piece()
        batches = []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(config["calls"]):
                piece()
            batches.append((time.perf_counter() - started) * 1e6 / config["calls"])
        results[name] = statistics.median(batches)
    print("PIECES " + json.dumps(results))


def _worker(side: Side, tree: Path, mode: str, config: dict, tag: str) -> dict:
    done = subprocess.run(
        [PY, str(Path(__file__).resolve()), mode, json.dumps({"tree": str(tree), **config})],
        cwd=tree,
        env=side.gateway.env,
        capture_output=True,
        timeout=120,
    )
    line = next((x for x in done.stdout.decode().splitlines() if x.startswith(tag + " ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"{mode} {side.name}: {done.stderr.decode()[-2000:]}")
    return json.loads(line[len(tag) + 1 :])


def pieces_report(pieces: dict) -> str:
    lines = ["", "The checks one by one (µs per call, in-process, SQLite, local-memory cache):"]
    lines.append(f"  {'before':>8s} {'after':>8s}  check")
    for name, after in pieces["after"].items():
        before = pieces["before"].get(name)
        shown = f"{before:8.1f}" if before is not None else "       -"
        lines.append(f"  {shown} {after:8.1f}  {name}")
    return "\n".join(lines)


def sql_report(profiles: dict) -> str:
    lines = ["", "SQL of one request (the last profiled one), before then after:"]
    for path in PATHS:
        for side in ("before", "after"):
            lines.append(f"{path} {side}:")
            lines += [f"    {sql[:400]}" for sql in profiles[(path, side)]["sql"]]
    return "\n".join(lines)


def profile_report(profiles: dict, requests: int, top: int = 6) -> str:
    lines = [
        "",
        f"Where the time goes: in-process (httpx.ASGITransport), {requests} requests per path "
        "with the limits key, cProfile on every thread timing CPU (time.thread_time); "
        "profiled times are inflated, compare before with after:",
    ]
    for path in PATHS:
        before, after = profiles[(path, "before")], profiles[(path, "after")]
        lines.append(
            f"{path}: CPU {before['cpu_ms']:.2f} -> {after['cpu_ms']:.2f} ms per request "
            f"(profiled), DB queries {before['queries']:.1f} -> {after['queries']:.1f}, "
            f"thread hops (sync_to_async) {before['hops']:.1f} -> {after['hops']:.1f}"
        )
        names = set(before["groups"]) | set(after["groups"])
        diffs = sorted(
            names,
            key=lambda n: after["groups"].get(n, 0) - before["groups"].get(n, 0),
            reverse=True,
        )
        lines.append("  self CPU by module, largest increases (ms per request, before -> after):")
        for name in diffs[:top]:
            b, a = before["groups"].get(name, 0.0), after["groups"].get(name, 0.0)
            lines.append(f"    {a - b:+6.2f}  {b:6.2f} -> {a:6.2f}  {name}")
        changed = sorted(
            set(after["functions"]) | set(before["functions"]),
            key=lambda n: (
                after["functions"].get(n, [0.0])[0] - before["functions"].get(n, [0.0])[0]
            ),
            reverse=True,
        )
        lines.append(
            "  project functions, largest increases in cumulative CPU (ms per request, "
            "before -> after; '-' = no such function before):"
        )
        for name in changed[:top]:
            a = after["functions"].get(name, [0.0])[0]
            b = before["functions"].get(name)
            shown = f"{b[0]:6.2f}" if b else "     -"
            lines.append(f"    {a - (b[0] if b else 0):+6.2f}  {shown} -> {a:6.2f}  {name}")
    return "\n".join(lines)


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop gateways, remove temp trees


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="rounds (requests per cell)")
    parser.add_argument("--before", default=BEFORE, help="the revision before the checks")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "limits.txt"))
    parser.add_argument("--budget", type=float, default=100, help="seconds for measuring")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile N requests per path"
    )
    parser.add_argument("--sql", action="store_true", help="with --profile: print the SQL")
    parser.add_argument("--profile-worker", help=argparse.SUPPRESS)
    parser.add_argument("--pieces-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_worker:
        profile_worker(json.loads(args.profile_worker))
        return
    if args.pieces_worker:
        pieces_worker(json.loads(args.pieces_worker))
        return
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="tokenflow-limits-"))
    before_tree: Path | None = None
    mock = None
    sides: list[Side] = []
    threads: list[threading.Thread] = []
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
        profiles = {}
        for path in PATHS if args.profile else ():
            for side, tree in zip(sides, (before_tree, ROOT), strict=True):
                config = {"path": path, "key": side.keys["limits"], "requests": args.profile}
                profiles[(path, side.name)] = _worker(
                    side, tree, "--profile-worker", config, "PROFILE"
                )
        pieces = {}
        for side, tree in zip(sides, (before_tree, ROOT), strict=True) if args.profile else ():
            config = {"key": side.keys["limits"], "calls": 200}
            pieces[side.name] = _worker(side, tree, "--pieces-worker", config, "PIECES")
    finally:
        for thread in threads:  # interrupted while starting: let a gateway come up, then stop it
            thread.join()
        for side in sides:
            side.gateway.stop()
            shutil.rmtree(side.gateway.dir, ignore_errors=True)
        if mock is not None:
            mock.terminate()
            mock.wait()
        if before_tree is not None:
            shutil.rmtree(before_tree, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(samples, args, time.monotonic() - started)
    if profiles:
        text += "\n" + profile_report(profiles, args.profile) + "\n" + pieces_report(pieces)
        if args.sql:
            text += "\n" + sql_report(profiles)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
