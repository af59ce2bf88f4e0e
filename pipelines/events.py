"""A run's stream events, built from its rows: one builder per event, used live and by the
replay of a finished run, so a replay says exactly what the live stream said.

Live, the rows are the in-memory objects the run updates as it goes (no query here);
on replay they come from `selectors.run_replay_get`.
"""

from collections.abc import Sequence
from typing import Any

from pipelines.models import PipelineRun, RunAgent
from routing.services.generation import StreamEvent


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def agent_model_name(link: RunAgent) -> str | None:
    """The model an agent ran on: its Generation's (what ran), else the agent's model
    (a disabled model gets no Generation), None if the agent was deleted since."""
    if link.generation is not None:
        return link.generation.model_name
    return link.agent.model.name if link.agent is not None else None


def run_metadata(run: PipelineRun, links: Sequence[RunAgent], *, replayed: bool) -> StreamEvent:
    """The first event: ids, the agents and their Generations, the aggregator's model."""
    return StreamEvent(
        "metadata",
        {
            "run_id": run.pk,
            "message_id": run.message_id,
            "pipeline": run.pipeline.name,
            "conversation_id": run.conversation.external_id if run.conversation else None,
            "agents": [
                {
                    "name": link.agent_name,
                    "model": agent_model_name(link),
                    "generation_id": link.generation_id,
                }
                for link in links
            ],
            "aggregator": run.pipeline.aggregator_model.name,
            "replayed": replayed,
        },
    )


def agent_delta_event(link: RunAgent, text: str) -> StreamEvent:
    """A chunk of an agent's answer as it streams (live only, when asked for)."""
    return StreamEvent(
        "agent_delta", {"agent": link.agent_name, "generation_id": link.generation_id, "text": text}
    )


def agent_event(link: RunAgent) -> StreamEvent:
    """`agent_done` (with the answer) or `agent_failed` (with why) for a finished agent."""
    data: dict[str, Any] = {
        "agent": link.agent_name,
        "model": agent_model_name(link),
        "generation_id": link.generation_id,
        "duration_ms": _ms(link.duration_ms),
    }
    if link.status == RunAgent.Status.DONE:
        text = link.generation.output_text if link.generation else ""
        return StreamEvent("agent_done", {**data, "text": text})
    return StreamEvent(
        "agent_failed", {**data, "code": link.error_code, "reason": link.error_message}
    )


def run_cost(run: PipelineRun) -> float:
    """USD of the run's generations (agents and aggregator): set by the run's finish, else
    summed from the prefetched rows (pipelines.selectors)."""
    cost = getattr(run, "cost_usd", None)
    if cost is not None:
        return cost
    generations = [link.generation for link in run.agent_runs.all()]
    generations.append(run.aggregator_generation)
    return float(sum(g.cost_usd or 0 for g in generations if g is not None))


def run_summary(run: PipelineRun) -> dict[str, Any]:
    return {
        "run_id": run.pk,
        "cost_usd": run_cost(run),
        "status": run.status,
        "missing": run.missing,
        "agents_ms": _ms(run.agents_ms),
        "ttft_ms": _ms(run.ttft_ms),
        "duration_ms": _ms(run.duration_ms),
    }


def run_end_event(run: PipelineRun) -> StreamEvent:
    """The last event of a completed run: the aggregator's finish reason and usage, timings."""
    data: dict[str, Any] = {"generation_id": run.aggregator_generation_id}
    aggregator = run.aggregator_generation
    if aggregator is not None:
        prompt, completion = aggregator.prompt_tokens or 0, aggregator.completion_tokens or 0
        data["finish_reason"] = aggregator.finish_reason
        data["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return StreamEvent("end", {**data, **run_summary(run)})


def run_error_event(run: PipelineRun, links: Sequence[RunAgent], **extra: Any) -> StreamEvent:
    """The last event of a failed run; `failures` when every agent failed. `extra` carries
    what only the live stream knows (the aggregator error's HTTP status, retry_after)."""
    data: dict[str, Any] = {
        "message": run.error_message,
        "code": run.error_code,
        "run_id": run.pk,
    }
    if run.aggregator_generation_id:
        data["generation_id"] = run.aggregator_generation_id
    if run.error_code == "all_agents_failed":
        data["failures"] = [
            {"agent": link.agent_name, "code": link.error_code, "reason": link.error_message}
            for link in links
            if link.status != RunAgent.Status.DONE
        ]
    return StreamEvent("error", {**data, **extra})


def replay_events(run: PipelineRun, links: Sequence[RunAgent]) -> list[StreamEvent]:
    """A finished run as its stream: metadata, agent events, the whole answer, end/error."""
    events = [run_metadata(run, links, replayed=True), *map(agent_event, links)]
    if run.status != PipelineRun.Status.COMPLETED:
        return [*events, run_error_event(run, links)]
    if run.answer:
        events.append(StreamEvent("text", {"text": run.answer}))
    return [*events, run_end_event(run)]
