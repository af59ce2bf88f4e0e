"""JSON Lines on the wire: parsing a JSONL body or upload, and negotiation for JSONL streams."""

from typing import Any

from django.conf import settings
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser

from tokenflow_site.api import json_loads
from tokenflow_site.errors import ApiError

JSONL = "application/jsonl"
JSONL_TYPES = (JSONL, "application/x-ndjson", "application/x-jsonlines")


class JsonLines(list):
    """[(line number, object)] of a JSONL document: a parsed body that is not a JSON one."""


def too_large(field: str, size: int) -> ApiError:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return ApiError(
        f"'{field}' is {size} bytes or more; the limit is {limit} (TOKENFLOW_MAX_UPLOAD_BYTES).",
        code="input_too_large",
        status=413,
        field=field,
    )


def jsonl_read(stream: Any, *, field: str) -> bytes:
    """At most DATA_UPLOAD_MAX_MEMORY_SIZE bytes of `stream`, or a 413 naming `field`."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    raw = stream.read(limit + 1) if stream is not None else b""
    if len(raw) > limit:
        raise too_large(field, len(raw))
    return raw


def jsonl_rows(data: bytes | str) -> JsonLines:
    """(line number, object) for every non-blank line; 400 naming the first malformed line."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ApiError(f"The JSONL is not UTF-8 ({exc}).", code="invalid_jsonl") from exc
    rows = JsonLines()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json_loads(line)))
        except ValueError as exc:
            raise ApiError(
                f"line {number}: malformed JSON ({exc}).",
                code="invalid_jsonl",
                extra={"line": number},
            ) from exc
    return rows


class JsonLinesParser(BaseParser):
    """`application/jsonl` request bodies -> JsonLines."""

    media_type = JSONL

    def parse(self, stream, media_type=None, parser_context=None) -> JsonLines:
        return jsonl_rows(jsonl_read(stream, field="body"))


class NdjsonParser(JsonLinesParser):
    media_type = "application/x-ndjson"


class JsonLinesAliasParser(JsonLinesParser):
    media_type = "application/x-jsonlines"


JSONL_PARSERS = [JsonLinesParser, NdjsonParser, JsonLinesAliasParser]


class IgnoreAcceptNegotiation(DefaultContentNegotiation):
    """A fixed-format endpoint (a JSONL stream, errors as JSON): a client's `Accept` header
    picks nothing, so `Accept: application/jsonl` is no 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
