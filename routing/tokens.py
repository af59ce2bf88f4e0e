"""Token counting with tiktoken (offline thanks to the seeded cache)."""

from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=4)
def _encoding(name: str):
    # tiktoken is imported lazily: it reads its (seeded) cache on first use.
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, *, encoding: str | None = None) -> int:
    return len(_encoding(encoding or settings.TOKENFLOW_TOKENIZER_ENCODING).encode(text))


def count_message_tokens(messages: list[dict]) -> int:
    """Approximate chat prompt size: content tokens plus a few per message (OpenAI's rule);
    text parts and tool calls count, images do not."""
    from routing.messages import message_text

    return sum(count_tokens(message_text(m)) + 4 for m in messages) + 2
