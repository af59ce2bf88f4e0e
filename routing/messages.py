"""Reading OpenAI chat messages whose content may be a string, a list of parts or null.

/v1/chat/completions keeps messages as OpenAI shapes them (image parts, assistant
`tool_calls`, `tool` replies); everything that only needs text (the classifier, token
counts, compression, the local and mock models) reads them through these helpers.
"""

from typing import Any

# A request needs these model capabilities (ModelRanking.supports_<name>).
CAPABILITIES = ("chat", "tools", "json_object", "json_schema", "vision", "embeddings")


def content_text(content: Any) -> str:
    """The text of a message content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def message_text(message: dict[str, Any]) -> str:
    """A message as text: its content, plus its tool calls' names and arguments (a tool
    call is what an assistant said, so it counts towards tokens and prompts)."""
    text = content_text(message.get("content"))
    calls = message.get("tool_calls") or []
    if calls:
        text += "".join(
            f"{call['function'].get('name', '')}({call['function'].get('arguments', '')})"
            for call in calls
            if isinstance(call, dict) and isinstance(call.get("function"), dict)
        )
    return text


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """[{"role", "content": str}] for text-only backends (the local model's chat
    template); `developer` is `system` for them."""
    return [
        {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": message_text(m),
        }
        for m in messages
    ]


def image_parts(messages: list[dict[str, Any]]) -> int:
    """How many image parts the messages carry."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    )


def capabilities_needed(messages: list[dict[str, Any]], options: dict[str, Any]) -> list[str]:
    """The model capabilities a chat request needs, in CAPABILITIES order."""
    needed = {"chat"}
    if (
        options.get("tools")
        or any(m.get("tool_calls") for m in messages)
        or any(m.get("role") == "tool" for m in messages)
    ):
        needed.add("tools")
    kind = (options.get("response_format") or {}).get("type")
    if kind in ("json_object", "json_schema"):
        needed.add(kind)
    if image_parts(messages):
        needed.add("vision")
    return [name for name in CAPABILITIES if name in needed]
