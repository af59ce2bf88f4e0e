"""Running a started run: the agents concurrently, each within min(its timeout, the time
left before the pipeline deadline), then the aggregator's streamed answer. Yields the
StreamEvents every transport renders (`pipelines.events` builds them)."""

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Sum
from django.utils import timezone

from pipelines.events import (
    agent_delta_event,
    agent_event,
    replay_events,
    run_end_event,
    run_error_event,
    run_metadata,
)
from pipelines.models import Conversation, Pipeline, PipelineRun, RunAgent
from pipelines.services.start import ProcessStart
from routing.models import Generation, Prompt
from routing.services.generation import (
    GenerationParams,
    StreamEvent,
    generation_prepare,
    generation_run,
)

PLACEHOLDER_RE = re.compile(r"\{(message|answers|missing)\}")

# --- persistence helpers -----------------------------------------------------------------


def _link_finish(link: RunAgent, *, code: str, reason: str, duration_ms: float) -> None:
    """An agent's outcome on its link: done (no code), cancelled, or failed with why."""
    if not code:
        link.status = RunAgent.Status.DONE
    elif code == "cancelled":
        link.status = RunAgent.Status.CANCELLED
    else:
        link.status = RunAgent.Status.FAILED
    link.duration_ms, link.error_code, link.error_message = duration_ms, code, reason
    link.save(update_fields=["status", "duration_ms", "error_code", "error_message"])


def _generation_fail(generation: Generation, code: str, message: str) -> None:
    """Turn a row the timeout cancelled into a failed one with the real reason."""
    generation.status, generation.error_code = Generation.Status.FAILED, code
    generation.error_message = message
    Generation.objects.filter(pk=generation.pk).update(
        status=generation.status, error_code=code, error_message=message
    )


def run_cost_sum(run: PipelineRun) -> float:
    """USD of the run's agent and aggregator generations, from the database."""
    ids = [run.aggregator_generation_id] if run.aggregator_generation_id else []
    ids += RunAgent.objects.filter(run=run, generation__isnull=False).values_list(
        "generation_id", flat=True
    )
    total = Generation.objects.filter(pk__in=ids).aggregate(s=Sum("cost_usd"))["s"]
    return float(total or 0)


def _run_finish(run: PipelineRun, status: str, **fields: Any) -> None:
    run.status, run.finished_at = status, timezone.now()
    for name, value in fields.items():
        setattr(run, name, value)
    run.save()
    run.cost_usd = run_cost_sum(run)  # what its end event reports (not a column)
    if run.conversation_id:
        Conversation.objects.filter(pk=run.conversation_id).update(updated_at=timezone.now())


def aggregator_messages(
    *,
    pipeline: Pipeline,
    message: str,
    answers: list[tuple[str, str]],
    missing: list[tuple[str, str]],
) -> list[dict[str, str]]:
    """The aggregator's prompt: the template with the message, the answers and what is missing."""
    missing_text = ""
    if missing:
        names = ", ".join(f"{name} ({reason})" for name, reason in missing)
        missing_text = (
            f"Missing perspectives: {names}. These agents failed or timed out; do not invent "
            "their views, and say that the answer may be incomplete."
        )
    values = {
        "message": message,
        "answers": "\n\n".join(f"[{name}]\n{text.strip()}" for name, text in answers),
        "missing": missing_text,
    }
    template = pipeline.aggregator_prompt
    body = PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], template)
    if missing_text and "{missing}" not in template:
        body = f"{body}\n\n{missing_text}"
    messages = [{"role": "user", "content": body.strip()}]
    if pipeline.aggregator_system_prompt:
        messages.insert(0, {"role": "system", "content": pipeline.aggregator_system_prompt})
    return messages


def _aggregator_prepare(start: ProcessStart, links: Sequence[RunAgent]) -> Generation:
    pipeline, run = start.pipeline, start.run
    done = [link for link in links if link.status == RunAgent.Status.DONE]
    generation = generation_prepare(
        model=pipeline.aggregator_model,
        messages=aggregator_messages(
            pipeline=pipeline,
            message=run.message,
            answers=[(link.agent_name, link.generation.output_text) for link in done],
            missing=[
                (link.agent_name, "timed out" if "timeout" in link.error_code else "failed")
                for link in links
                if link.status != RunAgent.Status.DONE
            ],
        ),
        params=GenerationParams(
            temperature=pipeline.aggregator_temperature, max_tokens=pipeline.aggregator_max_tokens
        ),
        api_key=run.api_key,
        transport=run.transport,
        source=Prompt.Source.PROCESS,
        check_provider=False,
    )
    run.aggregator_generation = generation
    run.save(update_fields=["aggregator_generation"])
    return generation


# --- running -----------------------------------------------------------------------------


async def _agent_generate(link: RunAgent, deltas: asyncio.Queue | None) -> None:
    """Run an agent's Generation to its end; its text chunks go to `deltas` if given."""
    async with aclosing(generation_run(link.generation)) as events:
        async for event in events:
            if deltas is not None and event.type == "text":
                deltas.put_nowait(agent_delta_event(link, event.data["text"]))


async def _agent_run(
    link: RunAgent, limit: float, deadline_bound: bool, deltas: asyncio.Queue | None = None
) -> RunAgent:
    """Run one agent within `limit` seconds and record its outcome on the link; never
    raises but CancelledError."""
    started = time.monotonic()
    generation = link.generation
    duration_ms = 0.0
    if generation is None:
        code, reason = "model_disabled", f"Model {link.agent.model} is disabled."
    else:
        try:
            await asyncio.wait_for(_agent_generate(link, deltas), timeout=max(limit, 0.001))
        except TimeoutError:
            code = "deadline_exceeded" if deadline_bound else "timeout"
            reason = f"No answer within {limit:.1f} s ({code.replace('_', ' ')})."
            await sync_to_async(_generation_fail)(generation, code, reason)
        duration_ms = (time.monotonic() - started) * 1000
        if generation.status != Generation.Status.COMPLETED:
            code, reason = generation.error_code or "failed", generation.error_message
        elif not generation.output_text.strip():
            code, reason = "empty_answer", "The agent answered with no text."
        else:
            code, reason = "", ""
    await sync_to_async(_link_finish)(link, code=code, reason=reason, duration_ms=duration_ms)
    return link


async def _abort(
    start: ProcessStart, tasks: list[asyncio.Task], aggregator: AsyncIterator | None
) -> None:
    """Client gone: cancel agents and the aggregator; rows end as cancelled."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if aggregator is not None:
        await aggregator.aclose()

    def persist() -> None:
        RunAgent.objects.filter(run=start.run, status=RunAgent.Status.RUNNING).update(
            status=RunAgent.Status.CANCELLED, error_code="cancelled"
        )
        _run_finish(
            start.run,
            PipelineRun.Status.CANCELLED,
            error_code="cancelled",
            error_message="The client disconnected or cancelled the run.",
        )

    await sync_to_async(persist)()


async def process_events(
    start: ProcessStart, *, agent_deltas: bool = False
) -> AsyncIterator[StreamEvent]:
    """The event stream of a run (or the replay of a finished one). `agent_deltas`: also
    an `agent_delta` per text chunk of every agent, before that agent's `agent_done` /
    `agent_failed` (a replay has none: its `agent_done` carries the whole text)."""
    if start.replay:
        for event in replay_events(start.run, start.links):
            yield event
        return
    run, pipeline, links = start.run, start.pipeline, start.links
    began = time.monotonic()
    deadline = began + pipeline.deadline_seconds
    tasks: list[asyncio.Task] = []
    aggregator: AsyncIterator[StreamEvent] | None = None
    try:
        yield run_metadata(run, links, replayed=False)
        # One queue carries the agents' deltas and their finished tasks, in order: an
        # agent's deltas are queued before its task ends, so before its agent_done.
        queue: asyncio.Queue = asyncio.Queue()
        for link in links:
            left = deadline - time.monotonic()
            limit = min(link.agent.timeout_seconds, left)
            bound = left < link.agent.timeout_seconds
            task = asyncio.create_task(
                _agent_run(link, limit, bound, queue if agent_deltas else None)
            )
            task.add_done_callback(queue.put_nowait)
            tasks.append(task)
        running = len(tasks)
        while running:
            item = await queue.get()
            if isinstance(item, asyncio.Task):
                running -= 1
                yield agent_event(item.result())
            else:
                yield item
        run.agents_ms = (time.monotonic() - began) * 1000
        failed = [link for link in links if link.status != RunAgent.Status.DONE]
        run.missing = [link.agent_name for link in failed]
        if len(failed) == len(links):
            message = "Every agent failed: " + "; ".join(
                f"{link.agent_name}: {link.error_message or link.error_code}" for link in failed
            )
            await sync_to_async(_run_finish)(
                run,
                PipelineRun.Status.FAILED,
                error_code="all_agents_failed",
                error_message=message,
                duration_ms=(time.monotonic() - began) * 1000,
            )
            yield run_error_event(run, links)
            return
        generation = await sync_to_async(_aggregator_prepare)(start, links)
        aggregator = generation_run(generation)
        parts: list[str] = []
        while True:
            try:
                event = await asyncio.wait_for(
                    anext(aggregator), timeout=max(deadline - time.monotonic(), 0.001)
                )
            except StopAsyncIteration:
                break
            except TimeoutError:
                reason = f"The pipeline deadline of {pipeline.deadline_seconds:g} s passed."
                await sync_to_async(_generation_fail)(generation, "deadline_exceeded", reason)
                event = StreamEvent(
                    "error", {"message": reason, "code": "deadline_exceeded", "status": 504}
                )
            if event.type == "metadata":
                continue
            if event.type == "text":
                if not parts:
                    run.ttft_ms = (time.monotonic() - began) * 1000
                parts.append(event.data["text"])
            elif event.type == "error":
                await sync_to_async(_run_finish)(
                    run,
                    PipelineRun.Status.FAILED,
                    answer="".join(parts),
                    error_code=event.data.get("code", "aggregator_failed"),
                    error_message=f"Aggregator: {event.data.get('message', '')}",
                    duration_ms=(time.monotonic() - began) * 1000,
                )
                # The HTTP status and retry_after of the failure are not stored: live only.
                live = {k: event.data[k] for k in ("status", "retry_after") if k in event.data}
                yield run_error_event(run, links, **live)
                return
            elif event.type == "end":
                await sync_to_async(_run_finish)(
                    run,
                    PipelineRun.Status.COMPLETED,
                    answer="".join(parts),
                    duration_ms=(time.monotonic() - began) * 1000,
                )
                yield run_end_event(run)
                return
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        await asyncio.shield(_abort(start, tasks, aggregator))
        raise
