"""A tiny OpenAI-compatible upstream (stdlib asyncio only) for benchmarks and tests.

`POST /v1/chat/completions` streams N chunks with a fixed gap (SSE, `data: [DONE]`) or answers
in one JSON body. The behaviour comes from the process defaults (--chunks, --gap) and can be
overridden per request by the model id, e.g. `bench?chunks=5&gap=0.01&status=429&fail_times=1
&retry_after=2&stall_after=3`. Each chunk carries `sent_at` (time.time()) so a client can
measure how late it arrived. `server.log` records ("start"|"done"|"disconnected", model).

Scripted answers (for the /v1 pass-through tests): every request body is kept in
`server.requests`; with `?tool_calls=N` and `tools` in the request, it calls N tools
(tools[i % len], arguments {"i": i, "tool": name}) streamed as OpenAI tool-call deltas;
a conversation ending with `tool` messages is answered "tool results: ..."; a
`response_format` is answered with JSON naming it; image parts are counted in the answer.
`POST /v1/embeddings` answers deterministic vectors (`?dimensions=N`, default 8).

    .venv/bin/python bench/mock_upstream.py --port 8911 --chunks 50 --gap 0.02 [--pacing absolute]
"""

import argparse
import asyncio
import contextlib
import json
import time
from collections import defaultdict
from urllib.parse import parse_qs


class MockUpstream:
    def __init__(self, *, chunks: int = 20, gap: float = 0.02, pacing: str = "relative") -> None:
        self.chunks = chunks
        self.gap = gap
        # relative: sleep `gap` after each chunk (a busy machine stretches the stream);
        # absolute: chunk i is due `(i + 1) * gap` after the head, as a real model's tokens
        # are (its pace does not depend on how busy its client's machine is).
        self.pacing = pacing
        self.log: list[tuple[str, str]] = []
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.requests: list[dict] = []
        self.server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._connection, host, port, backlog=2048)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.close()
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writers.add(writer)
        try:
            while True:  # keep-alive: several requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                await self._handle(method, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _send_head(writer, status: int, content_type: str, extra: dict | None = None, length=None):
        reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
        lines.append(
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        )
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _json(self, writer, status: int, payload: dict, extra: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_head(writer, status, "application/json", extra, length=len(data))
        writer.write(data)

    async def _handle(self, method: str, path: str, body: bytes, writer) -> None:
        if method == "POST" and path.rstrip("/").endswith("/embeddings"):
            request = json.loads(body or b"{}")
            self.requests.append(request)
            self._json(writer, 200, embeddings(request))
            await writer.drain()
            return
        if not (method == "POST" and path.rstrip("/").endswith("/chat/completions")):
            self._json(writer, 404, {"error": {"message": "not found"}})
            await writer.drain()
            return
        request = json.loads(body or b"{}")
        self.requests.append(request)
        model = str(request.get("model", "bench"))
        query = {k: v[0] for k, v in parse_qs(model.partition("?")[2]).items()}
        chunks = int(query.get("chunks", self.chunks))
        gap = float(query.get("gap", self.gap))
        self.calls[model] += 1
        status = int(query.get("status", 200))
        if status != 200 and self.calls[model] <= int(query.get("fail_times", 10**9)):
            extra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            message = query.get("message", f"mock {status}")
            self._json(writer, status, {"error": {"message": message}}, extra)
            await writer.drain()
            return
        scripted = script(request, query)
        if scripted is not None:
            await self._scripted(writer, request, model, *scripted)
            return
        if not request.get("stream"):
            await asyncio.sleep(gap * chunks)
            text = "".join(f" tok{i}" for i in range(chunks))
            self._json(writer, 200, completion(model, text, chunks))
            await writer.drain()
            return
        self.log.append(("start", model))
        self._send_head(writer, 200, "text/event-stream")
        stall_after = int(query.get("stall_after", 10**9))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for index in range(chunks):
                if index >= stall_after:
                    await asyncio.sleep(3600)
                if gap and self.pacing == "absolute":
                    await asyncio.sleep(max(0.0, started + (index + 1) * gap - loop.time()))
                elif gap:
                    await asyncio.sleep(gap)
                _chunk(writer, chunk(model, f" tok{index}", sent_at=time.time()))
                await writer.drain()
            _chunk(writer, chunk(model, "", finish_reason="stop"))
            _chunk(writer, usage_chunk(model, chunks))
            _chunk(writer, "[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.log.append(("done", model))
        except (ConnectionError, asyncio.CancelledError):
            self.log.append(("disconnected", model))
            raise

    async def _scripted(self, writer, request: dict, model: str, text: str, calls: list) -> None:
        """Answer a scripted request: text words or tool calls, streamed or not."""
        finish = "tool_calls" if calls else "stop"
        if not request.get("stream"):
            body = completion(model, text, len(text.split()) + len(calls))
            message = body["choices"][0]["message"]
            if calls:
                message["content"] = None
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": c["function"]} for c in calls
                ]
            body["choices"][0]["finish_reason"] = finish
            self._json(writer, 200, body)
            await writer.drain()
            return
        self._send_head(writer, 200, "text/event-stream")
        for index, word in enumerate(text.split(" ") if text else []):
            _chunk(writer, chunk(model, word if index == 0 else " " + word))
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            for delta in (
                head,
                {"index": index, "function": {"arguments": arguments[:half]}},
                {"index": index, "function": {"arguments": arguments[half:]}},
            ):
                _chunk(writer, tool_chunk(model, delta))
            await writer.drain()
        _chunk(writer, chunk(model, "", finish_reason=finish))
        _chunk(writer, usage_chunk(model, len(text.split()) + len(calls)))
        _chunk(writer, "[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def script(request: dict, query: dict) -> tuple[str, list] | None:
    """(text, tool calls) for a request that asks for scripted behaviour, else None."""
    messages = request.get("messages") or []
    tools = request.get("tools") or []
    if messages and messages[-1].get("role") == "tool":
        results = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.insert(0, f"{message.get('tool_call_id')}={message.get('content')}")
        return "tool results: " + "; ".join(results), []
    count = int(query.get("tool_calls", 0))
    if tools and count:
        calls = []
        for i in range(count):
            name = tools[i % len(tools)]["function"]["name"]
            arguments = json.dumps({"i": i, "tool": name})
            calls.append({"id": f"call_up_{i}", "function": {"name": name, "arguments": arguments}})
        return "", calls
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_object":
        return json.dumps({"format": "json_object"}), []
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        properties = sorted((spec.get("schema") or {}).get("properties") or {})
        return json.dumps({"schema": spec.get("name"), "properties": properties}), []
    images = [
        part["image_url"]["url"]
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    if images:
        return f"images: {len(images)} first: {images[0][:40]}", []
    return None


def embeddings(request: dict) -> dict:
    """Deterministic vectors: position-coded by input length and index."""
    model = str(request.get("model", "embed"))
    query = {k: v[0] for k, v in parse_qs(model.partition("?")[2]).items()}
    dimensions = int(request.get("dimensions") or query.get("dimensions", 8))
    inputs = request.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    data = []
    for index, text in enumerate(inputs):
        size = len(text) if isinstance(text, str | list) else 1
        vector = [float((size + index + d) % 7) for d in range(dimensions)]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(str(t).split()) for t in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def tool_chunk(model: str, delta: dict) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}],
    }


def _chunk(writer, data: dict | str) -> None:
    payload = data if isinstance(data, str) else json.dumps(data)
    event = f"data: {payload}\n\n".encode()
    writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    if writer.is_closing():
        raise ConnectionResetError


def chunk(model: str, text: str, *, finish_reason=None, sent_at: float | None = None) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "sent_at": sent_at,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}],
    }


def usage_chunk(model: str, completion_tokens: int) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": completion_tokens,
            "total_tokens": 3 + completion_tokens,
        },
    }


def completion(model: str, text: str, completion_tokens: int) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": completion_tokens,
            "total_tokens": 3 + completion_tokens,
        },
    }


async def _main(args) -> None:
    upstream = MockUpstream(chunks=args.chunks, gap=args.gap, pacing=args.pacing)
    port = await upstream.start(args.host, args.port)
    print(f"mock upstream on http://{args.host}:{port}/v1", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--pacing", choices=("relative", "absolute"), default="relative")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))
