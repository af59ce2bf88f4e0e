"""Redaction: nothing shaped like a secret is stored or logged.

Upstream error texts quote keys ("Incorrect API key provided: sk-...abcd"), URLs carry
credentials, and config errors name server variables. `redact` masks key-like tokens,
credentials in URLs, `key=value` secrets and the values of the secret environment
variables this process holds, before a text reaches a database row or a log line.
"""

import os
import re

MASK = "[redacted]"

_RULES: list[tuple[re.Pattern, str]] = [
    # Credentials in URLs: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/:@]+:[^\s/@]+@"), rf"\1{MASK}@"),
    # Authorization values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9_\-\.=:/+]{8,}"), rf"\1 {MASK}"),
    # key=value / "key": "value" secrets.
    (
        re.compile(
            r"(?i)\b(api[_-]?key|access[_-]?token|token|secret|password|passwd)"
            r"(\"?\s*[:=]\s*\"?)[^\s\"',;&]{4,}"
        ),
        rf"\1\2{MASK}",
    ),
    # Keys by their shape: OpenAI sk-/sk-proj- (also masked forms like sk-...abcd), Groq
    # gsk_, OpenRouter sk-or-, TokenFlow tf_, Hugging Face hf_, GitHub ghp_, Slack, AWS.
    (re.compile(r"\b(?:sk|gsk|tf|hf|ghp|xox[abp])[-_][A-Za-z0-9_\-\*\.]{4,}"), MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{12,}\b"), MASK),
]

# Environment variables whose values must never appear in a stored text.
_SECRET_ENV = re.compile(r"(?i)(_API_KEY|_TOKEN|_SECRET|PASSWORD|^SECRET_KEY$|^DATABASE_URL$)")


def _env_secrets() -> list[str]:
    values = (v for name, v in os.environ.items() if _SECRET_ENV.search(name) and len(v) >= 6)
    return sorted(values, key=len, reverse=True)


def redact(text: str | None) -> str:
    """`text` with anything shaped like a secret replaced by "[redacted]"."""
    if not text:
        return ""
    for value in _env_secrets():
        text = text.replace(value, MASK)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
