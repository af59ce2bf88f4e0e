"""Fan-out: run a pipeline's agents concurrently, then stream the aggregator's answer.

`process_parse` validates a request, `process_start` (sync) resolves the pipeline, applies
message_id idempotency and persists the run with one queued Generation per agent, and
`process_events` (async) yields the StreamEvents every transport renders: `metadata`,
`agent_done` / `agent_failed` as agents finish, the aggregator's `text`, then `end` (or
`error`). Each agent and the aggregator is a normal Generation run by `generation_run`.
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey
from pipelines.models import Agent, Conversation, Pipeline, PipelineRun, RunAgent
from routing.models import Generation, Prompt
from routing.services.generation import (
    GenerationParams,
    StreamEvent,
    generation_complete,
    generation_prepare,
    generation_run,
)
from tokenflow_site.errors import ApiError, raise_too_large, require_text

PLACEHOLDER_RE = re.compile(r"\{(message|answers|missing)\}")


@dataclass(frozen=True)
class ProcessRequest:
    message: str
    message_id: str
    pipeline: str
    conversation_id: str | None = None


@dataclass
class AgentPlan:
    """One agent of a run: its link row and its queued Generation (None if it cannot run)."""

    agent: Agent
    link: RunAgent
    generation: Generation | None


@dataclass
class AgentOutcome:
    plan: AgentPlan
    ok: bool
    text: str = ""
    duration_ms: float = 0.0
    code: str = ""
    reason: str = ""


@dataclass
class ProcessStart:
    """What `process_start` prepared; `replay` means a finished run with this message_id."""

    run: PipelineRun
    pipeline: Pipeline
    plans: list[AgentPlan] = field(default_factory=list)
    replay: bool = False


# --- parsing -----------------------------------------------------------------------------


def _optional_id(data: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ApiError(f"'{name}' must be a string.", code="invalid_type", field=name)
    value = str(value).strip()
    if not value:
        raise ApiError(f"'{name}' must not be empty.", code="empty", field=name)
    if len(value) > max_chars:
        raise ApiError(f"'{name}' is longer than {max_chars} characters.", field=name)
    return value


def process_parse(data: dict[str, Any]) -> ProcessRequest:
    """`{message, message_id, pipeline?, conversation_id?}`; 400 missing, 413 too large."""
    limit = settings.TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS
    message = data.get("message")
    if isinstance(message, str) and len(message) > limit:
        raise_too_large("message", len(message), limit)
    message = require_text(data, "message")
    message_id = _optional_id(data, "message_id", 200)
    if message_id is None:
        raise ApiError("'message_id' is required.", code="required", field="message_id")
    pipeline = _optional_id(data, "pipeline", 100) or settings.TOKENFLOW_DEFAULT_PIPELINE
    return ProcessRequest(
        message=message,
        message_id=message_id,
        pipeline=pipeline,
        conversation_id=_optional_id(data, "conversation_id", 100),
    )


# --- starting a run ----------------------------------------------------------------------


def pipeline_resolve(*, name: str) -> tuple[Pipeline, list[Agent]]:
    """An enabled pipeline and its enabled agents; 404 unknown, 409 without agents."""
    pipeline = Pipeline.objects.select_related("aggregator_model").filter(name=name).first()
    if pipeline is None or not pipeline.enabled:
        available = list(Pipeline.objects.filter(enabled=True).values_list("name", flat=True))
        raise ApiError(
            f"Pipeline {name!r} is {'disabled' if pipeline else 'unknown'}. "
            f"Available: {', '.join(available) or 'none'}.",
            code="pipeline_not_found",
            status=404,
            field="pipeline",
            extra={"available_pipelines": available},
        )
    agents = list(pipeline.agents.filter(enabled=True).select_related("model"))
    if not agents:
        raise ApiError(
            f"Pipeline {name!r} has no enabled agents.",
            code="pipeline_has_no_agents",
            status=409,
            field="pipeline",
        )
    return pipeline, agents


def _owned(queryset, api_key: ApiKey | None):
    return queryset.filter(api_key=api_key) if api_key else queryset.filter(api_key__isnull=True)


def conversation_history(*, conversation: Conversation | None, turns: int) -> list[dict]:
    """The last `turns` completed runs of a conversation as user/assistant messages."""
    if conversation is None or not turns:
        return []
    runs = list(
        conversation.runs.filter(status=PipelineRun.Status.COMPLETED)
        .order_by("-created_at", "-pk")
        .values_list("message", "answer")[:turns]
    )
    history: list[dict] = []
    for message, answer in reversed(runs):
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
    return history


def _is_stale(run: PipelineRun) -> bool:
    grace = run.pipeline.deadline_seconds + settings.TOKENFLOW_PROCESS_STALE_GRACE
    return run.started_at < timezone.now() - timedelta(seconds=grace)


def _existing_run(*, request: ProcessRequest, api_key: ApiKey | None) -> PipelineRun | None:
    """The run already holding this message_id: replay it, 409, or reclaim it (None)."""
    run = (
        _owned(PipelineRun.objects, api_key)
        .select_related("pipeline")
        .filter(message_id=request.message_id)
        .first()
    )
    if run is None:
        return None
    if run.message != request.message:
        raise ApiError(
            f"message_id {request.message_id!r} was already used for a different message.",
            code="message_id_conflict",
            status=409,
            field="message_id",
            extra={"run_id": run.pk},
        )
    if run.status in (PipelineRun.Status.COMPLETED, PipelineRun.Status.FAILED):
        return run
    if run.status == PipelineRun.Status.RUNNING and not _is_stale(run):
        raise ApiError(
            f"A run for message_id {request.message_id!r} is still in progress.",
            code="run_in_progress",
            status=409,
            field="message_id",
            extra={"run_id": run.pk},
        )
    # Cancelled (client gone) or abandoned (its process died): run it again, once.
    claimed = PipelineRun.objects.filter(pk=run.pk, status=run.status).update(
        status=PipelineRun.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        raise ApiError(
            f"A run for message_id {request.message_id!r} is still in progress.",
            code="run_in_progress",
            status=409,
            field="message_id",
            extra={"run_id": run.pk},
        )
    return None


def _run_create(
    *, request: ProcessRequest, api_key: ApiKey | None, pipeline: Pipeline, transport: str
) -> PipelineRun | None:
    """Create the run (or reset a reclaimed one); None if a concurrent request won the race."""
    reclaimed = _owned(PipelineRun.objects, api_key).filter(message_id=request.message_id).first()
    conversation = None
    if request.conversation_id or reclaimed is None:
        conversation_qs = _owned(Conversation.objects, api_key)
        conversation = (
            conversation_qs.filter(external_id=request.conversation_id).first()
            if request.conversation_id
            else None
        ) or Conversation.objects.create(api_key=api_key, external_id=request.conversation_id or "")
    if reclaimed is not None:
        reclaimed.agent_runs.all().delete()
        reclaimed.pipeline = pipeline
        reclaimed.conversation = conversation or reclaimed.conversation
        reclaimed.transport = transport
        for name in ("answer", "error_code", "error_message"):
            setattr(reclaimed, name, "")
        reclaimed.missing, reclaimed.aggregator_generation = [], None
        reclaimed.agents_ms = reclaimed.ttft_ms = reclaimed.duration_ms = None
        reclaimed.finished_at = None
        reclaimed.save()
        return reclaimed
    try:
        with transaction.atomic():
            return PipelineRun.objects.create(
                pipeline=pipeline,
                api_key=api_key,
                message_id=request.message_id,
                message=request.message,
                conversation=conversation,
                transport=transport,
            )
    except IntegrityError:
        return None


def process_start(
    *, request: ProcessRequest, api_key: ApiKey | None, transport: str
) -> ProcessStart:
    """Resolve the pipeline, apply idempotency, persist the run and its agents' Generations."""
    pipeline, agents = pipeline_resolve(name=request.pipeline)
    for _ in range(2):  # a concurrent insert of the same message_id: look again
        existing = _existing_run(request=request, api_key=api_key)
        if existing is not None:
            return ProcessStart(run=existing, pipeline=existing.pipeline, replay=True)
        run = _run_create(request=request, api_key=api_key, pipeline=pipeline, transport=transport)
        if run is not None:
            break
    else:
        raise ApiError("Concurrent requests with the same message_id.", code="conflict", status=409)
    history = conversation_history(conversation=run.conversation, turns=pipeline.history_turns)
    prompt = Prompt.objects.create(
        text=request.message,
        messages=[{"role": "user", "content": request.message}],
        source=Prompt.Source.PROCESS,
        api_key=api_key,
    )
    plans = []
    for order, agent in enumerate(agents):
        link = RunAgent.objects.create(run=run, agent=agent, agent_name=agent.name, order=order)
        generation = None
        if agent.model.enabled:
            system = [{"role": "system", "content": agent.system_prompt}]
            generation = generation_prepare(
                model=agent.model,
                messages=(system if agent.system_prompt else [])
                + history
                + [{"role": "user", "content": request.message}],
                params=GenerationParams(temperature=agent.temperature, max_tokens=agent.max_tokens),
                api_key=api_key,
                transport=transport,
                source=Prompt.Source.PROCESS,
                prompt=prompt,
                check_provider=False,
            )
            link.generation = generation
            link.save(update_fields=["generation"])
        plans.append(AgentPlan(agent=agent, link=link, generation=generation))
    return ProcessStart(run=run, pipeline=pipeline, plans=plans)


# --- persistence helpers -----------------------------------------------------------------


def _link_finish(outcome: AgentOutcome) -> None:
    link = outcome.plan.link
    link.status = RunAgent.Status.DONE if outcome.ok else RunAgent.Status.FAILED
    if outcome.code == "cancelled":
        link.status = RunAgent.Status.CANCELLED
    link.duration_ms = outcome.duration_ms
    link.error_code, link.error_message = outcome.code, outcome.reason
    link.save(update_fields=["status", "duration_ms", "error_code", "error_message"])


def _generation_fail(generation: Generation, code: str, message: str) -> None:
    """Turn a row the timeout cancelled into a failed one with the real reason."""
    generation.status, generation.error_code = Generation.Status.FAILED, code
    generation.error_message = message
    Generation.objects.filter(pk=generation.pk).update(
        status=generation.status, error_code=code, error_message=message
    )


def _run_finish(run: PipelineRun, status: str, **fields: Any) -> None:
    run.status, run.finished_at = status, timezone.now()
    for name, value in fields.items():
        setattr(run, name, value)
    run.save()
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


def _aggregator_prepare(start: ProcessStart, outcomes: list[AgentOutcome]) -> Generation:
    pipeline, run = start.pipeline, start.run
    generation = generation_prepare(
        model=pipeline.aggregator_model,
        messages=aggregator_messages(
            pipeline=pipeline,
            message=run.message,
            answers=[(o.plan.agent.name, o.text) for o in outcomes if o.ok],
            missing=[
                (o.plan.agent.name, "timed out" if "timeout" in o.code else "failed")
                for o in outcomes
                if not o.ok
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


def _metadata(start: ProcessStart, *, replayed: bool) -> dict[str, Any]:
    run = start.run
    return {
        "run_id": run.pk,
        "message_id": run.message_id,
        "pipeline": start.pipeline.name,
        "conversation_id": run.conversation.external_id if run.conversation else None,
        "agents": [
            {
                "name": plan.agent.name,
                "model": plan.agent.model.name,
                "generation_id": plan.generation.pk if plan.generation else None,
            }
            for plan in start.plans
        ],
        "aggregator": start.pipeline.aggregator_model.name,
        "replayed": replayed,
    }


def _agent_event(outcome: AgentOutcome) -> StreamEvent:
    plan = outcome.plan
    data: dict[str, Any] = {
        "agent": plan.agent.name,
        "model": plan.agent.model.name,
        "generation_id": plan.generation.pk if plan.generation else None,
        "duration_ms": round(outcome.duration_ms, 1),
    }
    if outcome.ok:
        return StreamEvent("agent_done", {**data, "text": outcome.text})
    return StreamEvent("agent_failed", {**data, "code": outcome.code, "reason": outcome.reason})


async def _agent_run(plan: AgentPlan, limit: float, deadline_bound: bool) -> AgentOutcome:
    """Run one agent within min(its timeout, the time left); never raises but CancelledError."""
    started = time.monotonic()
    generation = plan.generation
    if generation is None:
        outcome = AgentOutcome(
            plan, ok=False, code="model_disabled", reason=f"Model {plan.agent.model} is disabled."
        )
    else:
        try:
            await asyncio.wait_for(generation_complete(generation), timeout=max(limit, 0.001))
        except TimeoutError:
            code = "deadline_exceeded" if deadline_bound else "timeout"
            reason = f"No answer within {limit:.1f} s ({code.replace('_', ' ')})."
            await sync_to_async(_generation_fail)(generation, code, reason)
        ok = generation.status == Generation.Status.COMPLETED
        outcome = AgentOutcome(
            plan,
            ok=ok and bool(generation.output_text.strip()),
            text=generation.output_text,
            duration_ms=(time.monotonic() - started) * 1000,
            code="" if ok else generation.error_code or "failed",
            reason="" if ok else generation.error_message,
        )
        if ok and not outcome.ok:
            outcome.code, outcome.reason = "empty_answer", "The agent answered with no text."
    await sync_to_async(_link_finish)(outcome)
    return outcome


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


async def process_events(start: ProcessStart) -> AsyncIterator[StreamEvent]:
    """The event stream of a run (or the replay of a finished one)."""
    if start.replay:
        async for event in _replay(start):
            yield event
        return
    run, pipeline = start.run, start.pipeline
    began = time.monotonic()
    deadline = began + pipeline.deadline_seconds
    tasks: list[asyncio.Task] = []
    aggregator: AsyncIterator[StreamEvent] | None = None
    try:
        yield StreamEvent("metadata", _metadata(start, replayed=False))
        for plan in start.plans:
            left = deadline - time.monotonic()
            limit = min(plan.agent.timeout_seconds, left)
            bound = left < plan.agent.timeout_seconds
            tasks.append(asyncio.create_task(_agent_run(plan, limit, bound)))
        outcomes: list[AgentOutcome] = []
        for next_done in asyncio.as_completed(tasks):
            outcome = await next_done
            outcomes.append(outcome)
            yield _agent_event(outcome)
        run.agents_ms = (time.monotonic() - began) * 1000
        outcomes.sort(key=lambda o: o.plan.link.order)
        failures = [o for o in outcomes if not o.ok]
        run.missing = [o.plan.agent.name for o in failures]
        if len(failures) == len(outcomes):
            message = "Every agent failed: " + "; ".join(
                f"{o.plan.agent.name}: {o.reason or o.code}" for o in failures
            )
            await sync_to_async(_run_finish)(
                run,
                PipelineRun.Status.FAILED,
                error_code="all_agents_failed",
                error_message=message,
                duration_ms=(time.monotonic() - began) * 1000,
            )
            yield StreamEvent(
                "error",
                {
                    "message": message,
                    "code": "all_agents_failed",
                    "run_id": run.pk,
                    "failures": [
                        {"agent": o.plan.agent.name, "code": o.code, "reason": o.reason}
                        for o in failures
                    ],
                },
            )
            return
        generation = await sync_to_async(_aggregator_prepare)(start, outcomes)
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
                yield StreamEvent(
                    "error", {**event.data, "run_id": run.pk, "generation_id": generation.pk}
                )
                return
            elif event.type == "end":
                await sync_to_async(_run_finish)(
                    run,
                    PipelineRun.Status.COMPLETED,
                    answer="".join(parts),
                    duration_ms=(time.monotonic() - began) * 1000,
                )
                yield StreamEvent("end", {**event.data, **_run_summary(run)})
                return
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        await asyncio.shield(_abort(start, tasks, aggregator))
        raise


def _run_summary(run: PipelineRun) -> dict[str, Any]:
    return {
        "run_id": run.pk,
        "status": run.status,
        "missing": run.missing,
        "agents_ms": run.agents_ms and round(run.agents_ms, 1),
        "ttft_ms": run.ttft_ms and round(run.ttft_ms, 1),
        "duration_ms": run.duration_ms and round(run.duration_ms, 1),
    }


# --- replay and read-back ----------------------------------------------------------------


def _replay_load(start: ProcessStart) -> list[StreamEvent]:
    run = (
        PipelineRun.objects.select_related(
            "pipeline__aggregator_model", "conversation", "aggregator_generation"
        )
        .prefetch_related("agent_runs__agent__model", "agent_runs__generation")
        .get(pk=start.run.pk)
    )
    links = list(run.agent_runs.all())
    metadata = {
        "run_id": run.pk,
        "message_id": run.message_id,
        "pipeline": run.pipeline.name,
        "conversation_id": run.conversation.external_id if run.conversation else None,
        "agents": [
            {
                "name": link.agent_name,
                "model": link.generation.model_name if link.generation else None,
                "generation_id": link.generation_id,
            }
            for link in links
        ],
        "aggregator": run.pipeline.aggregator_model.name,
        "replayed": True,
    }
    events = [StreamEvent("metadata", metadata)]
    for link in links:
        data = {
            "agent": link.agent_name,
            "model": link.generation.model_name if link.generation else None,
            "generation_id": link.generation_id,
            "duration_ms": link.duration_ms,
        }
        if link.status == RunAgent.Status.DONE:
            text = link.generation.output_text if link.generation else ""
            events.append(StreamEvent("agent_done", {**data, "text": text}))
        else:
            events.append(
                StreamEvent(
                    "agent_failed", {**data, "code": link.error_code, "reason": link.error_message}
                )
            )
    aggregator = run.aggregator_generation
    if run.status == PipelineRun.Status.COMPLETED:
        if run.answer:
            events.append(StreamEvent("text", {"text": run.answer}))
        end = {"generation_id": run.aggregator_generation_id, **_run_summary(run)}
        if aggregator is not None:
            prompt, completion = aggregator.prompt_tokens or 0, aggregator.completion_tokens or 0
            end["finish_reason"] = aggregator.finish_reason
            end["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        events.append(StreamEvent("end", end))
    else:
        events.append(
            StreamEvent(
                "error",
                {"message": run.error_message, "code": run.error_code, "run_id": run.pk},
            )
        )
    return events


async def _replay(start: ProcessStart) -> AsyncIterator[StreamEvent]:
    for event in await sync_to_async(_replay_load)(start):
        yield event


def run_get(*, run_id: int, api_key: ApiKey | None, staff: bool) -> PipelineRun:
    """A run the caller may read (its key's runs; staff sessions read all), else 404."""
    queryset = PipelineRun.objects.select_related(
        "pipeline__aggregator_model", "conversation", "aggregator_generation"
    ).prefetch_related("agent_runs__generation")
    if not staff:
        queryset = _owned(queryset, api_key)
    run = queryset.filter(pk=run_id).first()
    if run is None:
        raise ApiError(f"No run {run_id}.", code="not_found", status=404)
    return run


def run_detail(run: PipelineRun) -> dict[str, Any]:
    """The JSON shape of GET /api/process/<id>."""
    aggregator = run.aggregator_generation
    return {
        "id": run.pk,
        "pipeline": run.pipeline.name,
        "message_id": run.message_id,
        "message": run.message,
        "conversation_id": run.conversation.external_id if run.conversation else None,
        "status": run.status,
        "answer": run.answer,
        "missing": run.missing,
        "agents": [
            {
                "name": link.agent_name,
                "status": link.status,
                "model": link.generation.model_name if link.generation else None,
                "generation_id": link.generation_id,
                "text": link.generation.output_text if link.generation else "",
                "duration_ms": link.duration_ms,
                "error_code": link.error_code or None,
                "error_message": link.error_message or None,
            }
            for link in run.agent_runs.all()
        ],
        "aggregator": None
        if aggregator is None
        else {
            "generation_id": aggregator.pk,
            "model": aggregator.model_name,
            "status": aggregator.status,
            "prompt_tokens": aggregator.prompt_tokens,
            "completion_tokens": aggregator.completion_tokens,
        },
        "agents_ms": run.agents_ms,
        "ttft_ms": run.ttft_ms,
        "duration_ms": run.duration_ms,
        "error": {"code": run.error_code, "message": run.error_message} if run.error_code else None,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
