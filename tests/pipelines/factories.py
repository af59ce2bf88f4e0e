"""Pipelines with mock agents (plain functions)."""

from itertools import count

from pipelines.models import Agent, Pipeline
from routing.models import ModelRanking
from tests.factories import mock_model

_seq = count(1)


def pipeline(
    name: str | None = None,
    *,
    aggregator: ModelRanking | None = None,
    agents: dict[str, dict] | None = None,
    **fields,
) -> Pipeline:
    """A pipeline whose agents are `{name: mock options (+ timeout_seconds, system_prompt)}`;
    the aggregator defaults to a mock that echoes its prompt."""
    fields.setdefault("aggregator_prompt", "Q: {message}\nA:\n{answers}\n{missing}")
    created = Pipeline.objects.create(
        name=name or f"p{next(_seq)}", aggregator_model=aggregator or mock_model(), **fields
    )
    for order, (agent_name, options) in enumerate((agents or {}).items()):
        options = dict(options)
        agent_fields = {
            key: options.pop(key)
            for key in ("timeout_seconds", "system_prompt", "enabled", "temperature")
            if key in options
        }
        Agent.objects.create(
            pipeline=created,
            name=agent_name,
            model=mock_model(**options),
            order=order,
            **agent_fields,
        )
    return created
