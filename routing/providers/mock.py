"""A deterministic provider with latency and fault injection (tests, benchmarks, demos).

Options (from ModelRanking.options, overridable per request via `extra["mock"]`):
  response         fixed answer; default "Echo: <last user message>"
  token_delay      seconds between tokens (default 0)
  first_token_delay seconds before the first token (default: token_delay)
  fail_before_first  HTTP status to fail with before any token (e.g. 429, 500, 503)
  fail_after       fail with a 502 after this many tokens
  stall_after      stop sending (hang) after this many tokens
  retry_after      Retry-After seconds attached to fail_before_first
  fail_times       fail_before_first only for the first N calls of this provider name
  tool_calls       [{"name", "arguments"}] to call (arguments: an object or a JSON string),
                   or "auto": call the request's first tool (or the one tool_choice names)
                   with arguments built from its JSON schema. Streamed as OpenAI deltas
                   (argument fragments of `argument_chunk` characters, default 8), finish
                   reason "tool_calls". A conversation ending with `tool` replies is
                   answered in text instead ("Tool results: ...").
  dimensions       embedding size (default 16); vectors are unit-length and derived from
                   the text's SHA-256, so equal texts get equal vectors.

Image parts are acknowledged in the echo ("Echo: <text> [2 images]"). `response_format`
json_object is answered with {"echo": <last user message>}, json_schema
with an instance of the schema (first enum value, "mock" strings, minimum numbers).
"""

import asyncio
import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from routing.messages import content_text, image_parts, message_text
from routing.providers.base import (
    BaseProvider,
    ChatRequest,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    ProviderError,
)

TOKEN_RE = re.compile(r"\s*\S+")
_calls: defaultdict[str, int] = defaultdict(int)


def mock_tokens(text: str) -> list[str]:
    """Split into word tokens that keep their leading whitespace (join == text.strip())."""
    return TOKEN_RE.findall(text)


def reset_mock_calls() -> None:
    _calls.clear()


def mock_calls(name: str) -> int:
    return _calls[name]


class MockProvider(BaseProvider):
    def _options(self, request: ChatRequest) -> dict:
        return {**self.options, **(request.extra.get("mock") or {})}

    @staticmethod
    def answer(request: ChatRequest, options: dict) -> str:
        replies = _tool_replies(request.messages)
        if replies is not None:
            return "Tool results: " + "; ".join(replies)
        if "response" in options:
            return str(options["response"])
        last = next((m for m in reversed(request.messages) if m.get("role") == "user"), {})
        last_user = content_text(last.get("content"))
        response_format = request.options.get("response_format") or {}
        if response_format.get("type") == "json_object":
            return json.dumps({"echo": last_user})
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            return json.dumps(schema_instance(schema))
        images = image_parts([last]) if last else 0
        seen = f"[{images} image{'s' if images > 1 else ''}]" if images else ""
        return " ".join(part for part in ("Echo:", last_user, seen) if part)

    @staticmethod
    def calls(request: ChatRequest, options: dict) -> list[dict[str, Any]]:
        """The tool calls to make: [{"id", "name", "arguments": str}] (may be empty)."""
        wanted = options.get("tool_calls")
        if not wanted or _tool_replies(request.messages) is not None:
            return []
        tools = request.options.get("tools") or []
        choice = request.options.get("tool_choice")
        if wanted == "auto":
            if not tools or choice == "none":
                return []
            tool = tools[0]
            if isinstance(choice, dict):
                name = choice.get("function", {}).get("name")
                tool = next((t for t in tools if t["function"]["name"] == name), tool)
            function = tool["function"]
            wanted = [
                {
                    "name": function["name"],
                    "arguments": schema_instance(function.get("parameters") or {}),
                }
            ]
        return [
            {
                "id": f"call_mock_{index}",
                "name": call["name"],
                "arguments": call["arguments"]
                if isinstance(call.get("arguments"), str)
                else json.dumps(call.get("arguments") or {}),
            }
            for index, call in enumerate(wanted)
        ]

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        dimensions = request.dimensions or int(self.options.get("dimensions", 16))
        vectors, tokens = [], 0
        for text in request.inputs:
            text = text if isinstance(text, str) else " ".join(map(str, text))
            tokens += len(mock_tokens(text))
            vectors.append(hash_vector(text, dimensions))
        return EmbeddingResult(vectors, prompt_tokens=tokens)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        options = self._options(request)
        _calls[self.name] += 1
        delay = float(options.get("token_delay", 0))
        first_delay = float(options.get("first_token_delay", delay))
        fail_status = options.get("fail_before_first")
        fail_times = options.get("fail_times")
        if fail_status and (fail_times is None or _calls[self.name] <= int(fail_times)):
            if first_delay:
                await asyncio.sleep(first_delay)
            status = int(fail_status)
            raise ProviderError(
                f"mock upstream answered {status}",
                code="rate_limited" if status == 429 else "upstream_error",
                status=502 if status >= 500 else status,
                retryable=status == 429 or status >= 500,
                retry_after=options.get("retry_after"),
            )
        calls = self.calls(request, options)
        if calls:
            async for chunk in self._stream_calls(request, calls, options):
                yield chunk
            return
        answer_tokens = mock_tokens(self.answer(request, options))
        tokens = answer_tokens[: request.max_tokens] if request.max_tokens else answer_tokens
        fail_after = options.get("fail_after")
        stall_after = options.get("stall_after")
        loop = asyncio.get_running_loop()
        # An absolute schedule (token i at first_delay + i * delay), like a real upstream:
        # a slow consumer does not stretch the sender's timeline.
        due = loop.time() + first_delay
        for index, token in enumerate(tokens):
            if fail_after is not None and index >= int(fail_after):
                raise ProviderError("mock upstream failed mid-stream", code="upstream_error")
            if stall_after is not None and index >= int(stall_after):
                await asyncio.Event().wait()
            if index:
                due += delay
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            yield Chunk(token)
        usage: dict[str, Any] = {
            "prompt_tokens": _prompt_tokens(request),
            "completion_tokens": len(tokens),
        }
        if options.get("cached_tokens"):  # a provider-side prompt cache hit, as OpenAI reports it
            cached = min(int(options["cached_tokens"]), usage["prompt_tokens"])
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        yield Chunk(
            "",
            finish_reason="length" if len(tokens) < len(answer_tokens) else "stop",
            usage=usage,
        )

    async def _stream_calls(
        self, request: ChatRequest, calls: list[dict[str, Any]], options: dict
    ) -> AsyncIterator[Chunk]:
        """OpenAI's tool-call stream: per call a head delta (index, id, type, name), then
        its arguments in fragments."""
        delay = float(options.get("token_delay", 0))
        size = max(1, int(options.get("argument_chunk", 8)))
        completion_tokens = 0
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            yield Chunk(tool_calls=[head])
            arguments = call["arguments"]
            completion_tokens += 1 + len(mock_tokens(arguments))
            for start in range(0, len(arguments), size):
                if delay:
                    await asyncio.sleep(delay)
                fragment = {
                    "index": index,
                    "function": {"arguments": arguments[start : start + size]},
                }
                yield Chunk(tool_calls=[fragment])
        yield Chunk(
            finish_reason="tool_calls",
            usage={
                "prompt_tokens": _prompt_tokens(request),
                "completion_tokens": completion_tokens,
            },
        )


def _prompt_tokens(request: ChatRequest) -> int:
    return sum(len(mock_tokens(message_text(m))) for m in request.messages)


def _tool_replies(messages: list[dict[str, Any]]) -> list[str] | None:
    """The contents of the `tool` messages that end the conversation, or None."""
    replies = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        replies.append(content_text(message.get("content")))
    return list(reversed(replies)) if replies else None


def hash_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text` (SHA-256 counter mode, centred bytes)."""
    raw = b""
    counter = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [byte - 127.5 for byte in raw[:dimensions]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def schema_instance(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies a simple JSON schema (no $ref resolution)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: schema_instance(sub, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [schema_instance(schema.get("items") or {}, depth + 1) for _ in range(count)]
    if kind == "string":
        return "mock"
    if kind in ("integer", "number"):
        value = schema.get("minimum", 0)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None
