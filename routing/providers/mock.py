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
"""

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator

from routing.providers.base import BaseProvider, ChatRequest, Chunk, ProviderError

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
        if "response" in options:
            return str(options["response"])
        last_user = next(
            (m["content"] for m in reversed(request.messages) if m.get("role") == "user"), ""
        )
        return f"Echo: {last_user}"

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
        prompt_tokens = sum(len(mock_tokens(m.get("content", ""))) for m in request.messages)
        yield Chunk(
            "",
            finish_reason="length" if len(tokens) < len(answer_tokens) else "stop",
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens)},
        )
