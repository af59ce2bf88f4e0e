"""`tokenflow`: a terminal client for a running TokenFlow server.

    tokenflow ask "What is an AI model?"            # streams the answer as it arrives
    tokenflow ask --model auto "Prove that ..."     # prints the route first
    tokenflow ask --compress 0.5 < long_prompt.txt  # compresses the prompt first
    tokenflow classify "My invoice is wrong"
    tokenflow batch submit input.jsonl --model mock/echo [--watch]
    tokenflow batch watch 7                         # progress bar until the job ends
    tokenflow batch cancel 7

URL and key: TOKENFLOW_URL (default http://127.0.0.1:8000) and TOKENFLOW_API_KEY, else
the `api_key=` line of local-credentials.txt (`manage.py bootstrap_local`, run by `make
serve`) in $TOKENFLOW_VAR_DIR, ./var/ or the project's var/. The answer goes to stdout;
routes, progress and statistics go to stderr. Ctrl-C during `ask` cancels the generation
on the server (the row ends `cancelled`) and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

DEFAULT_URL = "http://127.0.0.1:8000"
CREDENTIALS = "local-credentials.txt"
TERMINAL_BATCH = {"completed", "failed", "cancelled", "paused"}
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A message for the user and an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- configuration -----------------------------------------------------------------------


def _credential_files() -> list[Path]:
    places = []
    if os.environ.get("TOKENFLOW_VAR_DIR"):
        places.append(Path(os.environ["TOKENFLOW_VAR_DIR"]))
    places += [Path.cwd() / "var", Path(__file__).resolve().parents[1] / "var"]
    return [place / CREDENTIALS for place in places]


def api_key() -> str:
    key = os.environ.get("TOKENFLOW_API_KEY", "").strip()
    if key:
        return key
    for path in _credential_files():
        if path.is_file():
            for line in path.read_text().splitlines():
                name, _, value = line.partition("=")
                if name.strip() == "api_key" and value.strip():
                    return value.strip()
    raise CliError(
        "No API key: set TOKENFLOW_API_KEY or run `make serve` once "
        "(it writes var/local-credentials.txt).",
        status=2,
    )


def base_url() -> str:
    return os.environ.get("TOKENFLOW_URL", DEFAULT_URL).rstrip("/")


def ws_url(path: str) -> str:
    parts = urlsplit(base_url())
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


class Client:
    """HTTP with the key; errors in the project's one shape become CliError."""

    def __init__(self) -> None:
        self.key = api_key()
        self.http = httpx.Client(
            base_url=base_url(),
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(60, connect=10),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"Cannot reach {base_url()}: {exc}", status=2) from exc
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            message = error.get("message") or response.text[:200]
            field = f" ({error['field']})" if error.get("field") else ""
            raise CliError(f"{response.status_code} {error.get('code', 'error')}{field}: {message}")
        return data

    def socket(self, path: str):
        try:
            return connect(
                ws_url(path),
                additional_headers={"Authorization": f"Bearer {self.key}"},
                open_timeout=10,
                max_size=None,
            )
        except InvalidStatus as exc:
            raise CliError(f"WebSocket refused: {exc}", status=2) from exc
        except OSError as exc:
            raise CliError(f"Cannot reach {base_url()}: {exc}", status=2) from exc


def err(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- ask ----------------------------------------------------------------------------------


def _prompt(arg: str | None) -> str:
    if arg is None or arg == "-":
        if sys.stdin.isatty():
            raise CliError("Give a prompt (or pipe one on stdin).", status=2)
        return sys.stdin.read()
    return arg


def route_lines(meta: dict[str, Any]) -> list[str]:
    """How `--model auto` decided, as printed before the answer."""
    route = meta.get("route") or {}
    lines = [
        f"route: {meta['top_category']} ({meta['confidence']:.2f}, {meta.get('engine', '')})"
        f" -> {meta['selected_model']}"
        + ("" if route.get("routed", True) else f"  [{route.get('reason', 'default model')}]")
    ]
    scores = sorted(meta.get("scores") or [], key=lambda s: -s["score"])[:5]
    if scores:
        lines.append("scores: " + ", ".join(f"{s['category']} {s['score']:.2f}" for s in scores))
    if meta.get("fallbacks"):
        lines.append("fallbacks: " + ", ".join(meta["fallbacks"]))
    for skip in meta.get("skipped") or []:
        lines.append(f"skipped: {skip['model']} ({skip.get('code', '')}): {skip.get('reason', '')}")
    return lines


def _compression_line(client: Client, generation_id: int) -> str | None:
    generation = client.request("GET", f"/api/generations/{generation_id}")
    if not generation.get("compression_id"):
        return None
    c = client.request("GET", f"/api/compressions/{generation['compression_id']}")
    return (
        f"compressed: {c['original_tokens']} -> {c['compressed_tokens']} tokens "
        f"(ratio {c['ratio']:.2f}, {c['engine']}, {c['duration_ms']:.0f} ms)"
    )


def cmd_ask(args: argparse.Namespace) -> int:
    client = Client()
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": _prompt(args.prompt)})
    message: dict[str, Any] = {"type": "generate", "model": args.model, "messages": messages}
    if args.temperature is not None:
        message["temperature"] = args.temperature
    if args.max_tokens is not None:
        message["max_tokens"] = args.max_tokens
    if args.compress is not None:
        message["compress"] = (
            {"ratio": args.compress}
            if args.compress <= 1
            else {"target_tokens": int(args.compress)}
        )
    with client.socket("/ws/generate/") as socket:
        socket.send(json.dumps(message))
        return _stream(client, socket, args)


def _stream(client: Client, socket, args: argparse.Namespace) -> int:
    started, first, cancelling = time.monotonic(), None, False
    while True:
        try:
            event = json.loads(socket.recv())
        except KeyboardInterrupt:
            if cancelling:  # a second Ctrl-C: leave at once (closing also cancels)
                err("\ninterrupted")
                return EXIT_INTERRUPTED
            cancelling = True
            err("\ncancelling…")
            socket.send(json.dumps({"type": "cancel"}))
            continue
        except ConnectionClosed as exc:
            raise CliError(f"The server closed the connection ({exc}).") from exc
        kind = event.get("type")
        if kind == "metadata":
            if event.get("selected_model") and not args.quiet:
                for line in route_lines(event):
                    err(line)
            if args.compress is not None and not args.quiet:
                line = _compression_line(client, event["generation_id"])
                if line:
                    err(line)
        elif kind == "token":
            first = first or time.monotonic()
            sys.stdout.write(event["text"])
            sys.stdout.flush()
        elif kind == "info" and event.get("fallback") and not args.quiet:
            fallback = event["fallback"]
            err(f"\nfallback: {fallback.get('from')} -> {fallback.get('to', '?')}")
        elif kind == "error":
            sys.stdout.write("\n")
            raise CliError(f"{event.get('code')}: {event.get('message')}")
        elif kind == "end":
            sys.stdout.write("\n")
            sys.stdout.flush()
            if event.get("finish_reason") == "cancelled":
                err(f"cancelled (generation #{event.get('generation_id')})")
                return EXIT_INTERRUPTED
            if not args.quiet:
                err(_summary(event, started, first))
            return 0


def _summary(end: dict[str, Any], started: float, first: float | None) -> str:
    usage = end.get("usage") or {}
    parts = [f"generation #{end.get('generation_id')}"]
    if usage:
        parts.append(f"{usage.get('prompt_tokens')} in / {usage.get('completion_tokens')} out")
    if first is not None:
        parts.append(f"TTFT {1000 * (first - started):.0f} ms")
        seconds = time.monotonic() - first
        if seconds > 0 and usage.get("completion_tokens"):
            parts.append(f"{usage['completion_tokens'] / seconds:.1f} tokens/s")
    return "[" + " · ".join(parts) + "]"


# --- classify -----------------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"prompt": _prompt(args.prompt), "multi_label": args.multi_label}
    if args.categories:
        body["possible_categories"] = [c.strip() for c in args.categories.split(",") if c.strip()]
    result = Client().request("POST", "/api/classify", json=body)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['top_category']}  (confidence {result['confidence']:.2f}, {result['engine']})")
    width = max(len(s["category"]) for s in result["scores"])
    for score in result["scores"]:
        bar = "█" * round(30 * score["score"])
        print(f"  {score['category']:<{width}}  {score['score']:.3f}  {bar}")
    return 0


# --- batches ------------------------------------------------------------------------------


def progress_bar(progress: dict[str, Any], width: int = 30) -> str:
    total, done = progress.get("total") or 0, progress.get("done") or 0
    filled = round(width * done / total) if total else width
    failed = (progress.get("counts") or {}).get("failed", 0)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"{progress.get('percent', 0):5.1f}%  {progress.get('status')}"
        + (f"  failed {failed}" if failed else "")
    )


def cmd_batch_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"No such file: {path}", status=2)
    form = {
        k: str(v)
        for k, v in {
            "model": args.model,
            "name": args.name or path.stem,
            "concurrency": args.concurrency,
            "max_attempts": args.max_attempts,
        }.items()
        if v is not None
    }
    with path.open("rb") as handle:
        job = Client().request(
            "POST",
            "/api/batches",
            data=form,
            files={"file": (path.name, handle, "application/jsonl")},
        )
    print(job["id"])
    err(f"batch #{job['id']} {job['status']}: {job['total_items']} items, model {job['model']}")
    if args.watch:
        return _watch(job["id"])
    return 0


def _watch(job_id: int) -> int:
    client = Client()
    tty = sys.stderr.isatty()
    last = None
    try:
        with client.socket(f"/ws/batches/{job_id}/") as socket:
            while True:
                try:
                    event = json.loads(socket.recv())
                except ConnectionClosed as exc:
                    if exc.rcvd and exc.rcvd.code == 4404:
                        raise CliError(f"Batch job {job_id} not found.") from exc
                    raise CliError(f"The server closed the connection ({exc}).") from exc
                if event.get("type") != "progress":
                    continue
                line = progress_bar(event)
                if line != last:
                    sys.stderr.write(("\r" if tty else "") + line + ("" if tty else "\n"))
                    sys.stderr.flush()
                    last = line
                if event.get("status") in TERMINAL_BATCH:
                    sys.stderr.write("\n" if tty else "")
                    return 0 if event["status"] == "completed" else 1
    except KeyboardInterrupt:
        err(f"\nstopped watching; the job goes on (tokenflow batch cancel {job_id} stops it)")
        return EXIT_INTERRUPTED


def cmd_batch_watch(args: argparse.Namespace) -> int:
    return _watch(args.id)


def cmd_batch_cancel(args: argparse.Namespace) -> int:
    job = Client().request("POST", f"/api/batches/{args.id}/cancel")
    err(f"batch #{job.get('id', args.id)} {job.get('status')}")
    return 0


# --- entry point --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="tokenflow",
        description="Terminal client for a TokenFlow server (TOKENFLOW_URL, TOKENFLOW_API_KEY).",
    )
    commands = root.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="stream an answer")
    ask.add_argument("prompt", nargs="?", help="the prompt ('-' or nothing: stdin)")
    ask.add_argument("--model", "-m", default="auto", help='a model name or "auto" (default)')
    ask.add_argument("--system", "-s", help="system prompt")
    ask.add_argument("--temperature", "-t", type=float)
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument(
        "--compress", type=float, help="compress the prompt first: a ratio (0-1] or target tokens"
    )
    ask.add_argument("--quiet", "-q", action="store_true", help="only the answer")
    ask.set_defaults(run=cmd_ask)

    classify = commands.add_parser("classify", help="classify a prompt with the routing table")
    classify.add_argument("prompt", nargs="?")
    classify.add_argument("--categories", help="comma-separated labels (default: routing table)")
    classify.add_argument("--multi-label", action="store_true")
    classify.add_argument("--json", action="store_true", help="print the raw response")
    classify.set_defaults(run=cmd_classify)

    batch = commands.add_parser("batch", help="batch jobs").add_subparsers(
        dest="batch_command", required=True
    )
    submit = batch.add_parser("submit", help="upload a JSONL file (OpenAI Batch input lines)")
    submit.add_argument("file")
    submit.add_argument("--model", help='default model of the items (or "auto")')
    submit.add_argument("--name")
    submit.add_argument("--concurrency", type=int)
    submit.add_argument("--max-attempts", type=int)
    submit.add_argument("--watch", action="store_true", help="then show its progress")
    submit.set_defaults(run=cmd_batch_submit)
    watch = batch.add_parser("watch", help="progress bar until the job ends")
    watch.add_argument("id", type=int)
    watch.set_defaults(run=cmd_batch_watch)
    cancel = batch.add_parser("cancel", help="cancel a job")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(run=cmd_batch_cancel)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        err(f"tokenflow: {exc}")
        return exc.status
    except KeyboardInterrupt:
        err("\ninterrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
