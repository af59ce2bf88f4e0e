"""Reads of the fan-out app: the pipeline a request names, a conversation's history, a run
for the caller (ownership through `accounts.permissions`) and a finished run to replay."""

from django.db.models import QuerySet

from accounts.permissions import Principal, owned_get
from pipelines.models import Agent, Conversation, Pipeline, PipelineRun, RunAgent
from tokenflow_site.errors import ApiError


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


def _run_with_rows() -> QuerySet:
    """Runs with everything their events and read-back need, in three queries."""
    return PipelineRun.objects.select_related(
        "pipeline__aggregator_model", "conversation", "aggregator_generation"
    ).prefetch_related("agent_runs__generation", "agent_runs__agent__model")


def run_get(*, principal: Principal, run_id: int) -> PipelineRun:
    """A run the caller may read (its key's runs; staff sessions read all), else 404."""
    return owned_get(_run_with_rows(), principal, pk=run_id, name="Run")


def run_replay_get(*, run_id: int) -> tuple[PipelineRun, list[RunAgent]]:
    """A finished run and its agent links (in agent order), to replay as a stream."""
    run = _run_with_rows().get(pk=run_id)
    return run, list(run.agent_runs.all())
