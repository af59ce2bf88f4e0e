"""Default routing data: the seed categories, the local and mock models, remote models."""

SEED_MODELS = [
    # name, provider, upstream model, rank, enabled, prices in/out per Mtok, context, description
    (
        "local/smollm2-135m-instruct",
        "local",
        "smollm2-135m-instruct",
        50,
        True,
        0,
        0,
        8192,
        "SmolLM2-135M-Instruct on this machine's CPU; no key needed.",
    ),
    (
        "mock/echo",
        "mock",
        "echo",
        90,
        True,
        0,
        0,
        32768,
        "Deterministic echo model for tests and benchmarks.",
    ),
    (
        "groq/llama-3.3-70b-versatile",
        "groq",
        "llama-3.3-70b-versatile",
        10,
        False,
        0.59,
        0.79,
        131072,
        "Groq Llama 3.3 70B; enable once GROQ_API_KEY is set.",
    ),
    (
        "groq/llama-3.1-8b-instant",
        "groq",
        "llama-3.1-8b-instant",
        20,
        False,
        0.05,
        0.08,
        131072,
        "Groq Llama 3.1 8B; enable once GROQ_API_KEY is set.",
    ),
    (
        "openrouter/deepseek/deepseek-r1",
        "openrouter",
        "deepseek/deepseek-r1",
        15,
        False,
        0.55,
        2.19,
        65536,
        "DeepSeek R1 through OpenRouter; enable once OPENROUTER_API_KEY is set.",
    ),
    (
        "openai/gpt-4o-mini",
        "openai",
        "gpt-4o-mini",
        30,
        False,
        0.15,
        0.6,
        128000,
        "OpenAI GPT-4o mini; enable once OPENAI_API_KEY is set.",
    ),
    (
        "local/minilm",
        "local-embedding",
        "all-MiniLM-L6-v2",
        60,
        True,
        0,
        0,
        256,
        "all-MiniLM-L6-v2 sentence embeddings (384 dimensions) on this machine's CPU.",
    ),
    (
        "openai/text-embedding-3-small",
        "openai",
        "text-embedding-3-small",
        70,
        False,
        0.02,
        0,
        8191,
        "OpenAI text-embedding-3-small; enable once OPENAI_API_KEY is set.",
    ),
]

# What each seeded model supports (ModelRanking.supports_*; staff can change them). The
# local SmolLM2 declares text chat only: it cannot call tools or keep to a schema reliably.
SEED_CAPABILITIES = {
    "local/smollm2-135m-instruct": {"chat"},
    "mock/echo": {"chat", "tools", "json_object", "json_schema", "vision", "embeddings"},
    "groq/llama-3.3-70b-versatile": {"chat", "tools", "json_object"},
    "groq/llama-3.1-8b-instant": {"chat", "tools", "json_object"},
    "openrouter/deepseek/deepseek-r1": {"chat"},
    "openai/gpt-4o-mini": {"chat", "tools", "json_object", "json_schema", "vision"},
    "local/minilm": {"embeddings"},
    "openai/text-embedding-3-small": {"embeddings"},
}
CAPABILITY_NAMES = ("chat", "tools", "json_object", "json_schema", "vision", "embeddings")

SEED_CATEGORIES = {
    "reasoning": (
        "Questions that need step-by-step reasoning: math word problems, logic puzzles, proofs, "
        "careful analysis and explaining why something is true.",
        [
            "openrouter/deepseek/deepseek-r1",
            "groq/llama-3.3-70b-versatile",
            "local/smollm2-135m-instruct",
        ],
    ),
    "function-calling": (
        "Requests to perform an action with a tool or API: book a table or flight, schedule, "
        "order, send a message or email, set a reminder, look up live data such as weather "
        "or prices, or return the JSON arguments of a function call.",
        ["groq/llama-3.3-70b-versatile", "openai/gpt-4o-mini", "local/smollm2-135m-instruct"],
    ),
    "text-to-text": (
        "Writing and rewriting text: summaries, translations, emails, stories, paraphrases "
        "and answers to general questions.",
        ["groq/llama-3.1-8b-instant", "openai/gpt-4o-mini", "local/smollm2-135m-instruct"],
    ),
}


def _has_capabilities(model_ranking) -> bool:
    """False for the historical model of migrations older than the capability fields."""
    return any(f.name == "supports_tools" for f in model_ranking._meta.get_fields())


def seed_capabilities(model_ranking, names=None) -> None:
    """Set the capability fields of the seeded models (all, or `names`) that exist."""
    for name, capabilities in SEED_CAPABILITIES.items():
        if names is not None and name not in names:
            continue
        model_ranking.objects.filter(name=name).update(
            **{f"supports_{c}": c in capabilities for c in CAPABILITY_NAMES}
        )


def seed_routing(model_ranking, category_route) -> None:
    """Create the seed rows that are missing (idempotent; staff edits are kept)."""
    by_name = {}
    created_names = set()
    for name, provider, upstream, rank, enabled, pin, pout, ctx, desc in SEED_MODELS:
        by_name[name], created = model_ranking.objects.get_or_create(
            name=name,
            defaults=dict(
                provider=provider,
                upstream_model=upstream,
                rank=rank,
                enabled=enabled,
                input_price_per_mtok=pin,
                output_price_per_mtok=pout,
                context_window=ctx,
                description=desc,
            ),
        )
        if created:
            created_names.add(name)
    if _has_capabilities(model_ranking):
        seed_capabilities(model_ranking, created_names)
    for category, (description, models) in SEED_CATEGORIES.items():
        for position, name in enumerate(models):
            category_route.objects.get_or_create(
                category=category,
                model=by_name[name],
                defaults=dict(description=description, priority=100 - 10 * position),
            )
