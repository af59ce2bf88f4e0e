"""A transformers causal LM in this process, streamed token by token from a worker thread.

A bounded queue sits in front of the model: TOKENFLOW_LOCAL_CONCURRENCY requests generate at
once (default 1), up to TOKENFLOW_LOCAL_QUEUE_SIZE wait (told their position by
`Chunk(info={"queue_position": n})`), the next one gets a 503 `queue_full` with Retry-After.
Closing the stream sets a flag that a stopping criterion checks after every token.
"""

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from routing.providers.base import BaseProvider, ChatRequest, Chunk, ProviderError

Emit = Callable[[Chunk], None]


@dataclass(eq=False)
class _Ticket:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    granted: bool = False


class LocalQueue:
    """Slots for running generations plus a bounded FIFO of waiting ones (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.waiting: deque[_Ticket] = deque()

    def is_full(self) -> bool:
        with self._lock:
            return (
                self.running >= settings.TOKENFLOW_LOCAL_CONCURRENCY
                and len(self.waiting) >= settings.TOKENFLOW_LOCAL_QUEUE_SIZE
            )

    def enter(self) -> _Ticket:
        """A ticket, granted at once if a slot is free; ProviderError 503 if the queue is full."""
        ticket = _Ticket(asyncio.get_running_loop())
        with self._lock:
            if self.running < settings.TOKENFLOW_LOCAL_CONCURRENCY and not self.waiting:
                self.running += 1
                ticket.granted = True
            elif len(self.waiting) >= settings.TOKENFLOW_LOCAL_QUEUE_SIZE:
                raise queue_full_error()
            else:
                self.waiting.append(ticket)
        return ticket

    def position(self, ticket: _Ticket) -> int:
        with self._lock:
            return self.waiting.index(ticket) + 1 if ticket in self.waiting else 0

    def leave(self, ticket: _Ticket) -> None:
        """Give up a waiting ticket, or release a granted slot to the next waiter."""
        with self._lock:
            if ticket in self.waiting:
                self.waiting.remove(ticket)
                to_wake = list(self.waiting)
            elif ticket.granted:
                ticket.granted = False
                if self.waiting:
                    successor = self.waiting.popleft()
                    successor.granted = True  # the slot passes on
                    to_wake = [successor, *self.waiting]
                else:
                    self.running -= 1
                    to_wake = []
            else:
                return
        for waiter in to_wake:  # every waiter re-reads its position
            if not waiter.loop.is_closed():
                waiter.loop.call_soon_threadsafe(waiter.wake.set)


def queue_full_error() -> ProviderError:
    return ProviderError(
        "The local model queue is full; retry later.",
        code="queue_full",
        status=503,
        retry_after=settings.TOKENFLOW_LOCAL_RETRY_AFTER,
    )


_queue = LocalQueue()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def local_queue() -> LocalQueue:
    return _queue


def _worker_pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=max(1, settings.TOKENFLOW_LOCAL_CONCURRENCY),
                thread_name_prefix="local-llm",
            )
        return _executor


def hf_generate(request: ChatRequest, emit: Emit, cancelled: threading.Event) -> None:
    """Blocking: apply the chat template, `model.generate` with a per-token streamer."""
    # torch/transformers load lazily (seconds, hundreds of MB): only when first used.
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from routing.local_model import load_local_model

    tokenizer, model = load_local_model()
    inputs = tokenizer.apply_chat_template(
        request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_length = inputs["input_ids"].shape[1]
    max_new = request.max_tokens or settings.TOKENFLOW_LOCAL_DEFAULT_MAX_TOKENS
    generated: list[int] = []
    state = {"printed": 0}

    class Streamer:
        """Emits the new text after every token (holding back half UTF-8 characters)."""

        def put(self, value) -> None:
            ids = value.reshape(-1).tolist()
            if len(ids) > 1 and not generated:  # the prompt is put first
                return
            generated.extend(ids)
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return
            if len(text) > state["printed"]:
                emit(Chunk(text[state["printed"] :]))
                state["printed"] = len(text)

        def end(self) -> None:
            pass

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return cancelled.is_set()

    sampling: dict[str, Any] = {"do_sample": False}
    if request.temperature:
        sampling = {"do_sample": True, "temperature": request.temperature}
        if request.top_p is not None:
            sampling["top_p"] = request.top_p
    if request.seed is not None:
        torch.manual_seed(request.seed)
    extra: dict[str, Any] = {}
    if request.stop:
        extra = {"stop_strings": request.stop, "tokenizer": tokenizer}
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=max_new,
            streamer=Streamer(),
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            **sampling,
            **extra,
        )
    finish = "length" if len(generated) >= max_new else "stop"
    emit(
        Chunk(
            finish_reason=finish,
            usage={"prompt_tokens": prompt_length, "completion_tokens": len(generated)},
        )
    )


class LocalHFProvider(BaseProvider):
    """Streams from the local model; `generate` (blocking, thread) is swappable in tests."""

    generate: Callable[[ChatRequest, Emit, threading.Event], None] = staticmethod(hf_generate)

    def check_ready(self) -> None:
        if _queue.is_full():
            raise queue_full_error()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        ticket = _queue.enter()
        cancelled = threading.Event()
        handed_over = False
        try:
            while not ticket.granted:
                yield Chunk(info={"queue_position": _queue.position(ticket)})
                await ticket.wake.wait()
                ticket.wake.clear()
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue = asyncio.Queue()

            def emit(item: Any) -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(chunks.put_nowait, item)

            def work() -> None:
                try:
                    self.generate(request, emit, cancelled)
                except BaseException as exc:  # surfaced on the loop side
                    emit(exc)
                finally:
                    emit(None)

            future = _worker_pool().submit(work)
            # The slot is freed when the thread really stops, not when the client leaves.
            future.add_done_callback(lambda _f: _queue.leave(ticket))
            handed_over = True
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise ProviderError(
                        f"Local generation failed: {type(item).__name__}: {item}",
                        code="local_generation_failed",
                        status=500,
                    )
                yield item
        finally:
            cancelled.set()
            if not handed_over:
                _queue.leave(ticket)
