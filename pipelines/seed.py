"""The default pipeline: two perspectives and a summarizer on the local model."""

DEFAULT_PIPELINE = "default"
DEFAULT_MODEL = "local/smollm2-135m-instruct"

AGENTS = [
    # name, system prompt, temperature, max tokens
    (
        "analyst",
        "You are a careful analyst. Answer the user's message with the key facts and a "
        "short step-by-step explanation. Be concise.",
        0.2,
        128,
    ),
    (
        "critic",
        "You are a practical critic. Point out the risks, caveats and alternatives the user "
        "should consider about their message. Be concise.",
        0.7,
        128,
    ),
]

AGGREGATOR_SYSTEM = "You are a helpful assistant that writes one combined, concise answer."


def seed_pipelines(pipeline_model, agent_model, model_ranking) -> None:
    """Create the default pipeline if it is missing (idempotent; staff edits are kept)."""
    model = model_ranking.objects.filter(name=DEFAULT_MODEL).first()
    if model is None or pipeline_model.objects.filter(name=DEFAULT_PIPELINE).exists():
        return
    pipeline = pipeline_model.objects.create(
        name=DEFAULT_PIPELINE,
        description="Two perspectives (analyst, critic) combined by a summarizer.",
        aggregator_model=model,
        aggregator_system_prompt=AGGREGATOR_SYSTEM,
        aggregator_max_tokens=192,
        deadline_seconds=300,
    )
    for order, (name, system, temperature, max_tokens) in enumerate(AGENTS):
        agent_model.objects.create(
            pipeline=pipeline,
            name=name,
            model=model,
            system_prompt=system,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout_seconds=120,
            order=order,
        )
