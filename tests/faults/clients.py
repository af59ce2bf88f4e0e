"""What a client sees: SSE streams read in threads, with every event and how the stream ended."""

import json
import os
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from routing.models import Generation

OPEN = (Generation.Status.QUEUED, Generation.Status.STREAMING)

# Every scenario: on PostgreSQL + Redis (CI's second run), skipped cleanly without them.
SCENARIO_MARKS = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (
            os.environ.get("DATABASE_URL", "").startswith("postgres")
            and os.environ.get("REDIS_URL")
        ),
        reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL",
    ),
]


@dataclass
class StreamResult:
    status: int | None = None
    events: list[tuple[str, dict]] = field(default_factory=list)
    transport_error: str | None = None  # the connection broke before the stream ended
    body: str = ""  # a non-stream (JSON error) answer

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    @property
    def text(self) -> str:
        return "".join(data["text"] for name, data in self.events if name == "text_chunk")

    @property
    def last(self) -> tuple[str, dict] | None:
        return self.events[-1] if self.events else None

    @property
    def generation_id(self) -> int | None:
        for _name, data in self.events:
            if "generation_id" in data:
                return data["generation_id"]
        return None


class SseStream(threading.Thread):
    """POST /api/generate and read its SSE events; `first_text` is set on the first chunk."""

    def __init__(self, url: str, key: str, body: dict, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.body, self.timeout = url, key, body, timeout
        self.result = StreamResult()
        self.first_text = threading.Event()
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=self.timeout) as http,
                http.stream(
                    "POST",
                    f"{self.url}/api/generate",
                    json=self.body,
                    headers={"Authorization": f"Bearer {self.key}"},
                ) as response,
            ):
                self.result.status = response.status_code
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    self.result.body = response.read().decode()
                    return
                name = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: ") and name:
                        self.result.events.append((name, json.loads(line.removeprefix("data: "))))
                        if name == "text_chunk":
                            self.first_text.set()
        except httpx.HTTPError as exc:
            self.result.transport_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished_at = time.monotonic()
            self.first_text.set()  # never leave a waiter hanging


def stream(url: str, key: str, body: dict, timeout: float = 60) -> StreamResult:
    thread = SseStream(url, key, body, timeout)
    thread.run()
    return thread.result


def wait_rows_closed(ids: list[int], timeout: float) -> float:
    """Seconds until none of these generations is queued/streaming (AssertionError after)."""
    started = time.monotonic()
    while Generation.objects.filter(pk__in=ids, status__in=OPEN).exists():
        left = list(Generation.objects.filter(pk__in=ids, status__in=OPEN).values("pk", "status"))
        assert time.monotonic() - started < timeout, f"still open after {timeout} s: {left}"
        time.sleep(0.1)
    return time.monotonic() - started
