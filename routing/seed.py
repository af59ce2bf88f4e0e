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
]

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


def seed_routing(model_ranking, category_route) -> None:
    """Create the seed rows that are missing (idempotent; staff edits are kept)."""
    by_name = {}
    for name, provider, upstream, rank, enabled, pin, pout, ctx, desc in SEED_MODELS:
        by_name[name], _ = model_ranking.objects.get_or_create(
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
    for category, (description, models) in SEED_CATEGORIES.items():
        for position, name in enumerate(models):
            category_route.objects.get_or_create(
                category=category,
                model=by_name[name],
                defaults=dict(description=description, priority=100 - 10 * position),
            )
