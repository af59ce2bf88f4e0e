"""Starting a run: resolve the pipeline, apply `message_id` idempotency and persist the run
with one queued Generation per agent (all sync, one thread hop for the transports)."""

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey
from pipelines.models import Conversation, Pipeline, PipelineRun, RunAgent
from pipelines.selectors import conversation_history, pipeline_resolve, run_replay_get
from routing.models import Prompt
from routing.services.generation import GenerationParams, generation_prepare
from routing.services.spend import budget_check, has_budget
from tokenflow_site.errors import ApiError


@dataclass(frozen=True)
class ProcessRequest:
    """A validated `/api/process` request (`serializers.ProcessRequestSerializer`)."""

    message: str
    message_id: str
    pipeline: str
    conversation_id: str | None = None
    stream_agents: bool = False  # agent_delta events (process_events); not stored


@dataclass
class ProcessStart:
    """What `process_start` prepared: the run and one RunAgent per agent (its queued
    Generation attached, None for a disabled model). `replay`: a finished run with this
    message_id, loaded with its links to be replayed."""

    run: PipelineRun
    pipeline: Pipeline
    links: list[RunAgent] = field(default_factory=list)
    replay: bool = False


def _key_scope(queryset: QuerySet, api_key: ApiKey | None) -> QuerySet:
    """message_ids and conversation ids are namespaced per key (keyless runs share one);
    this is the idempotency namespace, not read access (staff read all runs)."""
    return queryset.filter(api_key=api_key) if api_key else queryset.filter(api_key__isnull=True)


def _is_stale(run: PipelineRun) -> bool:
    grace = run.pipeline.deadline_seconds + settings.TOKENFLOW_PROCESS_STALE_GRACE
    return run.started_at < timezone.now() - timedelta(seconds=grace)


def _in_progress(request: ProcessRequest, run: PipelineRun) -> ApiError:
    return ApiError(
        f"A run for message_id {request.message_id!r} is still in progress.",
        code="run_in_progress",
        status=409,
        field="message_id",
        extra={"run_id": run.pk},
    )


def _existing_run(*, request: ProcessRequest, api_key: ApiKey | None) -> PipelineRun | None:
    """The run already holding this message_id: replay it, 409, or reclaim it (None)."""
    run = (
        _key_scope(PipelineRun.objects, api_key)
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
        raise _in_progress(request, run)
    # Cancelled (client gone) or abandoned (its process died): run it again, once.
    claimed = PipelineRun.objects.filter(pk=run.pk, status=run.status).update(
        status=PipelineRun.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        raise _in_progress(request, run)
    return None


def _run_create(
    *, request: ProcessRequest, api_key: ApiKey | None, pipeline: Pipeline, transport: str
) -> PipelineRun | None:
    """Create the run (or reset a reclaimed one); None if a concurrent request won the race."""
    reclaimed = _key_scope(PipelineRun.objects, api_key).filter(message_id=request.message_id)
    reclaimed = reclaimed.first()
    conversation = None
    if request.conversation_id or reclaimed is None:
        conversation_qs = _key_scope(Conversation.objects, api_key)
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
    if has_budget(api_key):  # a spent key gets its 429 before the run is persisted
        budget_check(api_key=api_key)
    for _ in range(2):  # a concurrent insert of the same message_id: look again
        existing = _existing_run(request=request, api_key=api_key)
        if existing is not None:
            run, links = run_replay_get(run_id=existing.pk)
            return ProcessStart(run=run, pipeline=run.pipeline, links=links, replay=True)
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
    links = []
    for order, agent in enumerate(agents):
        link = RunAgent.objects.create(run=run, agent=agent, agent_name=agent.name, order=order)
        if agent.model.enabled:
            system = [{"role": "system", "content": agent.system_prompt}]
            link.generation = generation_prepare(
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
            link.save(update_fields=["generation"])
        links.append(link)
    return ProcessStart(run=run, pipeline=pipeline, links=links)
