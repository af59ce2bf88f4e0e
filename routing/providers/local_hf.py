"""A transformers causal LM in this process, streamed token by token from a worker thread.

A bounded queue sits in front of the model: TOKENFLOW_LOCAL_CONCURRENCY sequences generate at
once (default 4), up to TOKENFLOW_LOCAL_QUEUE_SIZE wait (told their position by
`Chunk(info={"queue_position": n})`), the next one gets a 503 `queue_full` with Retry-After.
One worker thread runs the model; greedy requests that wait together share one batched
`generate` call. Closing a stream sets a flag that is checked after every token.

Capabilities (seeded on its ModelRanking row): text chat only. SmolLM2-135M cannot call
tools or keep to a JSON schema reliably and has no vision, so its row declares none of
them and requests that need them are refused (400) or routed elsewhere (model "auto").
"""

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from routing.messages import text_messages
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


def local_queue() -> LocalQueue:
    return _queue


@dataclass(eq=False)
class Job:
    """One request handed to the worker: its chunks go out through `emit`, then None."""

    request: ChatRequest
    emit: Emit
    cancelled: threading.Event
    on_done: Callable[[], None]
    finished: bool = False

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.emit(None)
            self.on_done()

    def batchable(self) -> bool:
        """Greedy requests without stop strings or seeds share one forward pass."""
        r = self.request
        return not r.temperature and not r.stop and r.seed is None


class Batcher:
    """Runs jobs on one worker thread, several greedy jobs per `generate` call (left padding,
    attention mask); a thread exists only while there is work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: deque[Job] = deque()
        self._running = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")

    def submit(self, job: Job, run: Callable[[list[Job]], None]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._running:
                return
            self._running = True
        self._pool.submit(self._drain, run)

    def _next_batch(self) -> list[Job]:
        with self._lock:
            short = 0 < len(self._jobs) < settings.TOKENFLOW_LOCAL_CONCURRENCY
        if short and self._jobs[0].batchable():
            time.sleep(settings.TOKENFLOW_LOCAL_BATCH_WINDOW)  # let simultaneous requests join
        with self._lock:
            if not self._jobs:
                self._running = False
                return []
            batch = [self._jobs.popleft()]
            if batch[0].batchable():
                limit = settings.TOKENFLOW_LOCAL_CONCURRENCY
                while self._jobs and len(batch) < limit and self._jobs[0].batchable():
                    batch.append(self._jobs.popleft())
            return batch

    def _drain(self, run: Callable[[list[Job]], None]) -> None:
        while batch := self._next_batch():
            live = [job for job in batch if not job.cancelled.is_set()]
            try:
                if live:
                    run(live)
            except BaseException as exc:  # surfaced to each waiting stream
                for job in live:
                    if not job.finished:
                        job.emit(exc)
            finally:
                for job in batch:
                    job.finish()


_batcher = Batcher()


def hf_generate(request: ChatRequest, emit: Emit, cancelled: threading.Event) -> None:
    """Blocking: apply the chat template, `model.generate` with a per-token streamer."""
    # torch/transformers load lazily (seconds, hundreds of MB): only when first used.
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from routing.local_model import load_local_model

    tokenizer, model = load_local_model()
    inputs = tokenizer.apply_chat_template(
        text_messages(request.messages),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
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


def hf_generate_batch(jobs: list[Job]) -> None:
    """Blocking: greedy `generate` over several chat prompts at once (left-padded, masked);
    each row streams to its own job and stops alone (EOS, its max_tokens, or cancel)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from routing.local_model import load_local_model

    tokenizer, model = load_local_model()
    prompts = [
        list(
            tokenizer.apply_chat_template(
                text_messages(job.request.messages), add_generation_prompt=True
            )
        )
        for job in jobs
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    limits = [job.request.max_tokens or settings.TOKENFLOW_LOCAL_DEFAULT_MAX_TOKENS for job in jobs]
    generated: list[list[int]] = [[] for _ in jobs]
    printed = [0] * len(jobs)
    done = [False] * len(jobs)

    def close(row: int, reason: str) -> None:
        done[row] = True
        jobs[row].emit(
            Chunk(
                finish_reason=reason,
                usage={
                    "prompt_tokens": len(prompts[row]),
                    "completion_tokens": len(generated[row]),
                },
            )
        )
        jobs[row].finish()

    class Streamer:
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value) -> None:
            if not self.prompt_seen:  # the first put is the prompt batch
                self.prompt_seen = True
                return
            for row, token in enumerate(value.reshape(-1).tolist()):
                if done[row]:
                    continue
                if jobs[row].cancelled.is_set():
                    close(row, "cancelled")
                    continue
                if token in eos_ids:
                    generated[row].append(token)  # counted, like the one-at-a-time path
                    close(row, "stop")
                    continue
                generated[row].append(token)
                text = tokenizer.decode(generated[row], skip_special_tokens=True)
                if not text.endswith("\ufffd") and len(text) > printed[row]:
                    jobs[row].emit(Chunk(text[printed[row] :]))
                    printed[row] = len(text)
                if len(generated[row]) >= limits[row]:
                    close(row, "length")

        def end(self) -> None:
            pass

    class RowsDone(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor(
                [d or job.cancelled.is_set() for d, job in zip(done, jobs, strict=True)]
            )

    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max(limits),
            do_sample=False,
            streamer=Streamer(),
            stopping_criteria=StoppingCriteriaList([RowsDone()]),
            pad_token_id=pad,
        )
    for row in range(len(jobs)):
        if not done[row]:
            close(row, "length" if len(generated[row]) >= limits[row] else "stop")


class LocalHFProvider(BaseProvider):
    """Streams from the local model; `generate` (blocking, thread) is swappable in tests."""

    generate: Callable[[ChatRequest, Emit, threading.Event], None] = staticmethod(hf_generate)
    generate_batch: Callable[[list[Job]], None] = staticmethod(hf_generate_batch)

    @classmethod
    def run_batch(cls, jobs: list[Job]) -> None:
        """Worker thread: one job alone (any sampling), or several greedy ones together."""
        if len(jobs) == 1:
            cls.generate(jobs[0].request, jobs[0].emit, jobs[0].cancelled)
        else:
            cls.generate_batch(jobs)

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

            # The slot is freed when the worker is done with this job, not when the client
            # leaves (a cancelled row still occupies the batch until its next token).
            job = Job(request, emit, cancelled, on_done=lambda: _queue.leave(ticket))
            _batcher.submit(job, type(self).run_batch)
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
