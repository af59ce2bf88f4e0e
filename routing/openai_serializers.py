"""Request serializers of the OpenAI-compatible surface (/v1): chat completions with tools,
structured output and images, legacy completions, embeddings.

Every field is bounded (counts, sizes, ranges). Unknown top-level fields are kept aside as
`extra_body` and forwarded only to models whose `passthrough_fields` allowlist names them
(routing.services.generation.model_options); nothing else leaves the gateway.
"""

import json
import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from compression.serializers import CompressOptionsSerializer
from routing.serializers import MAX_MODEL_NAME_CHARS, SamplingSerializer
from routing.services.generation import GenerationParams, GenerationRequest
from tokenflow_site.api import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    text_check,
    too_large,
)
from tokenflow_site.errors import ApiError

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128  # OpenAI's limit
MAX_TOOL_CALLS = 128  # per assistant message
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 8192
MAX_PASSTHROUGH_FIELDS = 16
MAX_PASSTHROUGH_CHARS = 65_536
IMAGE_DETAILS = ("auto", "low", "high")
TOOL_CHOICES = ("none", "auto", "required")


def _invalid(message: str, code: str = "invalid_value") -> serializers.ValidationError:
    return serializers.ValidationError(message, code=code)


def _string(value: Any, where: str, *, limit: int, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{where} must be a string.", "invalid_type")
    if not empty and not value:
        raise _invalid(f"{where} must not be empty.", "empty")
    if len(value) > limit:
        raise _invalid(f"{where} is longer than {limit} characters.", "too_long")
    return text_check(value)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


# --- messages ----------------------------------------------------------------------------

PART_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["text"]},
                "text": {"type": "string"},
            },
            "required": ["type", "text"],
        },
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["image_url"]},
                "image_url": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string"},
                        "detail": {"type": "string", "enum": list(IMAGE_DETAILS)},
                    },
                    "required": ["url"],
                },
            },
            "required": ["type", "image_url"],
        },
    ]
}
TOOL_CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
            "required": ["name", "arguments"],
        },
    },
    "required": ["id", "function"],
}
CHAT_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": list(CHAT_ROLES)},
        "content": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": PART_SCHEMA}],
            "nullable": True,  # OpenAPI 3.0 has no "null" type
        },
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": TOOL_CALL_SCHEMA, "maxItems": MAX_TOOL_CALLS},
        "tool_call_id": {"type": "string"},
    },
    "required": ["role"],
}


class _Budget:
    """Counts text characters and images across a request's messages."""

    def __init__(self) -> None:
        self.chars = 0
        self.images = 0


@extend_schema_field({"type": "array", "items": CHAT_MESSAGE_SCHEMA, "minItems": 1})
class ChatMessagesField(serializers.Field):
    """OpenAI chat messages, kept structured: text or content parts (text, image_url),
    assistant `tool_calls`, `tool` replies with `tool_call_id`. Text-only part lists
    become one string; other message keys are dropped."""

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list) or not data:
            raise _invalid("must be a non-empty list of messages.")
        limit = settings.TOKENFLOW_MAX_MESSAGES
        if len(data) > limit:
            raise _invalid(f"has {len(data)} messages; the limit is {limit}.", "too_many_messages")
        budget = _Budget()
        messages = [
            self._message(message, f"messages[{index}]", budget)
            for index, message in enumerate(data)
        ]
        if budget.chars > settings.TOKENFLOW_MAX_INPUT_CHARS:
            raise too_large("messages", budget.chars, settings.TOKENFLOW_MAX_INPUT_CHARS)
        return messages

    def _message(self, message: Any, where: str, budget: _Budget) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise _invalid(f"{where} must be an object.")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise _invalid(f"{where}.role must be one of {', '.join(CHAT_ROLES)}.")
        out: dict[str, Any] = {"role": role}
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and role != "assistant":
            raise _invalid(f"{where}.tool_calls is only allowed on assistant messages.")
        content = message.get("content")
        if content is None and not (role == "assistant" and tool_calls):
            raise _invalid(f"{where}.content is required.", "required")
        out["content"] = self._content(content, role, f"{where}.content", budget)
        if message.get("name") is not None:
            out["name"] = _string(message["name"], f"{where}.name", limit=MAX_NAME_CHARS)
        if tool_calls is not None:
            out["tool_calls"] = self._tool_calls(tool_calls, f"{where}.tool_calls", budget)
        if role == "tool":
            out["tool_call_id"] = _string(
                message.get("tool_call_id"), f"{where}.tool_call_id", limit=MAX_ID_CHARS
            )
        return out

    def _content(self, content: Any, role: str, where: str, budget: _Budget) -> Any:
        if content is None:
            return None
        if isinstance(content, str):
            budget.chars += len(content)
            return text_check(content)
        if not isinstance(content, list) or not content:
            raise _invalid(f"{where} must be a string or a non-empty list of content parts.")
        parts = [self._part(part, role, f"{where}[{i}]", budget) for i, part in enumerate(content)]
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts

    def _part(self, part: Any, role: str, where: str, budget: _Budget) -> dict[str, Any]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or (kind == "refusal" and role == "assistant"):
            text = part.get("text", part.get("refusal"))
            text = _string(text, f"{where}.text", limit=10**9, empty=True)
            budget.chars += len(text)
            return {"type": "text", "text": text}
        if kind == "image_url":
            if role != "user":
                raise _invalid(f"{where}: image parts are only allowed in user messages.")
            return self._image(part.get("image_url"), f"{where}.image_url", budget)
        if kind is None:
            raise _invalid(f"{where} must be an object with a 'type'.")
        raise _invalid(
            f"{where}: content part type {str(kind)[:40]!r} is not supported "
            "(text and image_url are).",
            "unsupported_content",
        )

    @staticmethod
    def _image(image: Any, where: str, budget: _Budget) -> dict[str, Any]:
        if not isinstance(image, dict):
            raise _invalid(f"{where} must be an object {{url, detail?}}.")
        url = image.get("url")
        limit = settings.TOKENFLOW_MAX_IMAGE_URL_CHARS
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
            raise _invalid(f"{where}.url must be an http(s) URL or a data:image/... URL.")
        if len(url) > limit:
            raise too_large("messages", len(url), limit)
        budget.images += 1
        if budget.images > settings.TOKENFLOW_MAX_IMAGES:
            raise too_large("messages", budget.images, settings.TOKENFLOW_MAX_IMAGES, "images")
        out = {"url": text_check(url)}
        detail = image.get("detail")
        if detail is not None:
            if detail not in IMAGE_DETAILS:
                raise _invalid(f"{where}.detail must be one of {', '.join(IMAGE_DETAILS)}.")
            out["detail"] = detail
        return {"type": "image_url", "image_url": out}

    @staticmethod
    def _tool_calls(calls: Any, where: str, budget: _Budget) -> list[dict[str, Any]]:
        if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
            raise _invalid(f"{where} must be a list of at most {MAX_TOOL_CALLS} tool calls.")
        out = []
        for index, call in enumerate(calls):
            at = f"{where}[{index}]"
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                raise _invalid(
                    f"{at} must be an object {{id, type, function: {{name, arguments}}}}."
                )
            if call.get("type", "function") != "function":
                raise _invalid(f"{at}.type must be 'function'.")
            function = call["function"]
            name = _string(function.get("name"), f"{at}.function.name", limit=64)
            arguments = _string(
                function.get("arguments", ""), f"{at}.function.arguments", limit=10**9, empty=True
            )
            budget.chars += len(arguments)
            out.append(
                {
                    "id": _string(call.get("id"), f"{at}.id", limit=MAX_ID_CHARS),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        return out

    def to_representation(self, value):
        return value


# --- tools and structured output -----------------------------------------------------------

TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": FUNCTION_NAME_RE.pattern},
                "description": {"type": "string", "maxLength": MAX_DESCRIPTION_CHARS},
                "parameters": {"type": "object"},
                "strict": {"type": "boolean"},
            },
            "required": ["name"],
        },
    },
    "required": ["type", "function"],
}


def _schema_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a JSON schema object.")
    return value


@extend_schema_field({"type": "array", "items": TOOL_SCHEMA, "maxItems": MAX_TOOLS})
class ToolsField(serializers.Field):
    """`tools`: up to 128 functions with unique names; their JSON must fit the input limit."""

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list) or len(data) > MAX_TOOLS:
            raise _invalid(f"must be a list of at most {MAX_TOOLS} tools.")
        tools, names = [], set()
        for index, tool in enumerate(data):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise _invalid(f"{where} must be {{type: 'function', function: {{...}}}}.")
            function = tool.get("function")
            if not isinstance(function, dict):
                raise _invalid(f"{where}.function must be an object.")
            name = function.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
                raise _invalid(f"{where}.function.name must match {FUNCTION_NAME_RE.pattern}.")
            if name in names:
                raise _invalid(f"{where}: duplicate function name {name!r}.")
            names.add(name)
            out: dict[str, Any] = {"name": name}
            if function.get("description") is not None:
                out["description"] = _string(
                    function["description"],
                    f"{where}.function.description",
                    limit=MAX_DESCRIPTION_CHARS,
                    empty=True,
                )
            if function.get("parameters") is not None:
                out["parameters"] = _schema_object(
                    function["parameters"], f"{where}.function.parameters"
                )
            if function.get("strict") is not None:
                if not isinstance(function["strict"], bool):
                    raise _invalid(f"{where}.function.strict must be true or false.")
                out["strict"] = function["strict"]
            tools.append({"type": "function", "function": out})
        size = _json_size(tools)
        if size > settings.TOKENFLOW_MAX_INPUT_CHARS:
            raise too_large("tools", size, settings.TOKENFLOW_MAX_INPUT_CHARS)
        return tools

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": list(TOOL_CHOICES)},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                },
                "required": ["type", "function"],
            },
        ]
    }
)
class ToolChoiceField(serializers.Field):
    def to_internal_value(self, data: Any) -> Any:
        if data in TOOL_CHOICES:
            return data
        if (
            isinstance(data, dict)
            and data.get("type") == "function"
            and isinstance(data.get("function"), dict)
            and isinstance(data["function"].get("name"), str)
            and FUNCTION_NAME_RE.match(data["function"]["name"])
        ):
            return {"type": "function", "function": {"name": data["function"]["name"]}}
        raise _invalid(
            "must be 'none', 'auto', 'required' or {type: 'function', function: {name}}."
        )

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": FUNCTION_NAME_RE.pattern},
                    "description": {"type": "string"},
                    "schema": {"type": "object"},
                    "strict": {"type": "boolean"},
                },
                "required": ["name"],
            },
        },
        "required": ["type"],
    }
)
class ResponseFormatField(serializers.Field):
    """`response_format`: text (the default, not forwarded), json_object or json_schema."""

    def to_internal_value(self, data: Any) -> dict[str, Any] | None:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in ("text", "json_object") and "json_schema" in data:
            raise _invalid("json_schema is only allowed with type 'json_schema'.")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind != "json_schema":
            raise _invalid("type must be 'text', 'json_object' or 'json_schema'.")
        spec = data.get("json_schema")
        if not isinstance(spec, dict):
            raise _invalid("json_schema must be an object {name, schema?, strict?, description?}.")
        name = spec.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
            raise _invalid(f"json_schema.name must match {FUNCTION_NAME_RE.pattern}.")
        out: dict[str, Any] = {"name": name}
        if spec.get("description") is not None:
            out["description"] = _string(
                spec["description"],
                "json_schema.description",
                limit=MAX_DESCRIPTION_CHARS,
                empty=True,
            )
        if spec.get("schema") is not None:
            out["schema"] = _schema_object(spec["schema"], "json_schema.schema")
        if spec.get("strict") is not None:
            if not isinstance(spec["strict"], bool):
                raise _invalid("json_schema.strict must be true or false.")
            out["strict"] = spec["strict"]
        size = _json_size(out)
        if size > settings.TOKENFLOW_MAX_INPUT_CHARS:
            raise too_large("response_format", size, settings.TOKENFLOW_MAX_INPUT_CHARS)
        return {"type": "json_schema", "json_schema": out}

    def to_representation(self, value):
        return value


# --- requests ----------------------------------------------------------------------------


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class OpenAISamplingSerializer(SamplingSerializer):
    """Sampling shared by chat and legacy completions (OpenAI's names and ranges)."""

    model = StrictCharField(max_length=MAX_MODEL_NAME_CHARS, help_text='A model name or "auto".')
    n = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Choices to generate, 1..TOKENFLOW_MAX_CHOICES (default 8): each choice is "
        "its own generation (own upstream call, own Generation row); usage is their sum.",
    )
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_null=True, max_length=256)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)

    def validate_n(self, value: int | None) -> int | None:
        limit = settings.TOKENFLOW_MAX_CHOICES
        if value is not None and value > limit:
            raise _invalid(
                f"Ensure this value is less than or equal to {limit} (TOKENFLOW_MAX_CHOICES).",
                "out_of_range",
            )
        return value

    def passthrough(self) -> dict[str, Any]:
        """The body's unknown fields (bounded), kept as `extra_body` for the allowlist."""
        initial = self.initial_data if isinstance(self.initial_data, dict) else {}
        unknown = {k: v for k, v in initial.items() if k not in self.fields}
        if len(unknown) > MAX_PASSTHROUGH_FIELDS:
            raise ApiError(
                f"{len(unknown)} unknown fields; at most {MAX_PASSTHROUGH_FIELDS} are accepted "
                f"(first: {', '.join(sorted(unknown)[:5])}).",
                code="too_many_fields",
            )
        if any(len(k) > 64 for k in unknown):
            raise ApiError("Unknown field names are limited to 64 characters.", code="invalid")
        size = _json_size(unknown)
        if size > MAX_PASSTHROUGH_CHARS:
            raise too_large("extra fields", size, MAX_PASSTHROUGH_CHARS)
        return unknown

    def common(self, attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(transport extra, forwarded options) shared by chat and legacy completions."""
        if attrs.get("max_tokens") is None and attrs.get("max_completion_tokens") is not None:
            attrs["max_tokens"] = self.validate_max_tokens(attrs["max_completion_tokens"])
        options: dict[str, Any] = {}
        if attrs.get("user"):
            options["user"] = attrs["user"]
        extra_body = self.passthrough()
        if extra_body:
            options["extra_body"] = extra_body
        extra = {
            "stream": attrs.get("stream", False),
            "include_usage": bool((attrs.get("stream_options") or {}).get("include_usage")),
            "n": attrs.get("n") or 1,
        }
        return extra, options

    @staticmethod
    def params(attrs: dict[str, Any]) -> GenerationParams:
        base = SamplingSerializer.params(attrs)
        return GenerationParams(
            **{
                **base.__dict__,
                "frequency_penalty": attrs.get("frequency_penalty"),
                "presence_penalty": attrs.get("presence_penalty"),
            }
        )


class ChatCompletionRequestSerializer(OpenAISamplingSerializer):
    """POST /v1/chat/completions: OpenAI's body (TokenFlow adds `compress`)."""

    messages = ChatMessagesField()
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    tools = ToolsField(required=False, allow_null=True)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    response_format = ResponseFormatField(required=False, allow_null=True)
    logprobs = StrictBooleanField(required=False, allow_null=True)
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    compress = CompressOptionsSerializer(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> GenerationRequest:
        extra, options = self.common(attrs)
        tools = attrs.get("tools") or []
        choice = attrs.get("tool_choice")
        if choice is not None and choice != "none" and not tools:
            raise serializers.ValidationError(
                {"tool_choice": "needs 'tools'."}, code="invalid_value"
            )
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            if name not in {t["function"]["name"] for t in tools}:
                raise serializers.ValidationError(
                    {"tool_choice": f"names {name!r}, which is not in 'tools'."},
                    code="invalid_value",
                )
        if tools:
            options["tools"] = tools
            if choice is not None:
                options["tool_choice"] = choice
            if attrs.get("parallel_tool_calls") is not None:
                options["parallel_tool_calls"] = attrs["parallel_tool_calls"]
        if attrs.get("response_format"):
            options["response_format"] = attrs["response_format"]
        if attrs.get("top_logprobs") is not None and not attrs.get("logprobs"):
            raise serializers.ValidationError(
                {"top_logprobs": "needs 'logprobs': true."}, code="invalid_value"
            )
        if attrs.get("logprobs"):
            options["logprobs"] = True
            if attrs.get("top_logprobs") is not None:
                options["top_logprobs"] = attrs["top_logprobs"]
        return GenerationRequest(
            messages=attrs["messages"],
            model=attrs["model"],
            params=self.params(attrs),
            compress=attrs.get("compress"),
            extra=extra,
            options=options,
            cache=self.cache_choice(attrs),
        )


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
        ]
    }
)
class PromptField(serializers.Field):
    """Legacy `prompt`: a string, or a list holding one string."""

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, str):
            raise _invalid(
                "must be a string (or a list of one string; batch several prompts "
                "with the Batch API).",
                "invalid_type",
            )
        if len(data) > settings.TOKENFLOW_MAX_INPUT_CHARS:
            raise too_large("prompt", len(data), settings.TOKENFLOW_MAX_INPUT_CHARS)
        if not data.strip():
            raise _invalid("must not be empty.", "empty")
        return text_check(data)

    def to_representation(self, value):
        return value


class CompletionRequestSerializer(OpenAISamplingSerializer):
    """POST /v1/completions (legacy): the prompt becomes one user message of the same
    generation service; OpenAI's default of 16 max_tokens applies."""

    prompt = PromptField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, default=16)
    echo = StrictBooleanField(required=False, default=False)
    suffix = StrictCharField(required=False, allow_null=True, max_length=0)
    logprobs = StrictIntegerField(required=False, allow_null=True, max_value=0, min_value=0)
    best_of = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)

    def validate(self, attrs: dict[str, Any]) -> GenerationRequest:
        extra, options = self.common(attrs)
        extra["echo"] = attrs.get("echo", False)
        extra["prompt"] = attrs["prompt"]
        return GenerationRequest(
            messages=[{"role": "user", "content": attrs["prompt"]}],
            model=attrs["model"],
            params=self.params(attrs),
            extra=extra,
            options=options,
            cache=self.cache_choice(attrs),
        )


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ]
    }
)
class EmbeddingInputField(serializers.Field):
    """`input`: a string, strings, token ids or lists of token ids; bounded in count and
    size (413 beyond)."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, str):
            data = [data]
        elif isinstance(data, list) and data and all(_is_token(t) for t in data):
            data = [data]  # one token-id list
        if not isinstance(data, list) or not data:
            raise _invalid("must be a string or a non-empty list of strings or token lists.")
        limit = settings.TOKENFLOW_MAX_EMBEDDING_INPUTS
        if len(data) > limit:
            raise too_large("input", len(data), limit, "inputs")
        size = 0
        for index, item in enumerate(data):
            if isinstance(item, str):
                if not item:
                    raise _invalid(f"input[{index}] must not be empty.", "empty")
                text_check(item)
                size += len(item)
            elif isinstance(item, list) and item and all(_is_token(t) for t in item):
                size += len(item)
            else:
                raise _invalid(f"input[{index}] must be a non-empty string or token list.")
        if size > settings.TOKENFLOW_MAX_INPUT_CHARS:
            raise too_large("input", size, settings.TOKENFLOW_MAX_INPUT_CHARS)
        return data

    def to_representation(self, value):
        return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


class EmbeddingRequestSerializer(serializers.Serializer):
    """POST /v1/embeddings."""

    input = EmbeddingInputField()
    model = StrictCharField(
        max_length=MAX_MODEL_NAME_CHARS,
        required=False,
        default="",
        help_text="An embedding model; default TOKENFLOW_EMBEDDING_MODEL (local/minilm).",
    )
    encoding_format = serializers.ChoiceField(
        choices=["float", "base64"], required=False, default="float"
    )
    dimensions = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=8192)
    user = StrictCharField(required=False, allow_null=True, max_length=256)


__all__ = [
    "ChatCompletionRequestSerializer",
    "ChatMessagesField",
    "CompletionRequestSerializer",
    "EmbeddingRequestSerializer",
]
