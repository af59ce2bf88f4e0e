"""JSON Lines on the wire: parsing a JSONL body or upload (size-capped before and while
reading, one line at a time), and negotiation for JSONL streams."""

import io
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser

from tokenflow_site.api import json_loads
from tokenflow_site.errors import ApiError

JSONL = "application/jsonl"
JSONL_TYPES = (JSONL, "application/x-ndjson", "application/x-jsonlines")


class JsonLines:
    """(line number, object) of a JSONL document, read lazily: a parsed body that is not a
    JSON one. Consumers stop reading as soon as they have seen enough (the item limit)."""

    def __init__(self, rows: Iterable[tuple[int, Any]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return iter(self._rows)


def upload_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def too_large(field: str, size: int) -> ApiError:
    limit = upload_limit()
    return ApiError(
        f"'{field}' is {size} bytes or more; the limit is {limit} (TOKENFLOW_MAX_UPLOAD_BYTES).",
        code="input_too_large",
        status=413,
        field=field,
        extra={"limit": limit},
    )


def content_length_check(meta: dict[str, Any], *, field: str, slack: int = 0) -> None:
    """413 from the declared Content-Length alone, before a byte of the body is read."""
    try:
        declared = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return  # Django treats a malformed length as 0; the streaming cap still applies
    if declared > upload_limit() + slack:
        raise too_large(field, declared)


def jsonl_rows(stream: Any, *, field: str) -> Iterator[tuple[int, Any]]:
    """(line number, object) for every non-blank line of a binary stream, read one line at a
    time and never more than TOKENFLOW_MAX_UPLOAD_BYTES in all (413 naming `field`); 400
    naming the first malformed line."""
    if isinstance(stream, str):
        stream = stream.encode()
    if isinstance(stream, bytes):
        stream = io.BytesIO(stream)
    limit = upload_limit()
    total = number = 0
    while True:
        line = stream.readline(limit - total + 1) if stream is not None else b""
        if not line:
            return
        total += len(line)
        if total > limit:
            raise too_large(field, total)
        number += 1
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
        except UnicodeDecodeError as exc:
            raise ApiError(
                f"line {number}: the JSONL is not UTF-8 ({exc}).",
                code="invalid_jsonl",
                extra={"line": number},
            ) from exc
        if not text.strip():
            continue
        try:
            yield number, json_loads(text)
        except ValueError as exc:
            raise ApiError(
                f"line {number}: malformed JSON ({exc}).",
                code="invalid_jsonl",
                extra={"line": number},
            ) from exc


class UploadCapHandler(FileUploadHandler):
    """First multipart upload handler: counts a file's bytes as they stream in and stops
    with a 413 past TOKENFLOW_MAX_UPLOAD_BYTES (a chunked body has no Content-Length)."""

    def new_file(self, field_name, *args, **kwargs):
        self.size = 0
        return super().new_file(field_name, *args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.size += len(raw_data)
        if self.size > upload_limit():
            raise too_large(self.field_name, self.size)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class JsonLinesParser(BaseParser):
    """`application/jsonl` request bodies -> JsonLines."""

    media_type = JSONL

    def parse(self, stream, media_type=None, parser_context=None) -> JsonLines:
        request = (parser_context or {}).get("request")
        if request is not None:
            content_length_check(request.META, field="body")
        return JsonLines(jsonl_rows(stream, field="body"))


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
