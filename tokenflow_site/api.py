"""The front door shared by every HTTP endpoint: JSON parsing, strict serializer fields,
bounded pagination. DRF views get these through REST_FRAMEWORK settings, async views
through `tokenflow_site.endpoints.api_endpoint`. (No import of rest_framework.views here:
DRF imports this module while it loads its settings.)"""

import json
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import BaseParser

from tokenflow_site.errors import ApiError, validation_error_to_api_error

# --- JSON --------------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:30]} is too large for a number")
    return value


def json_loads(raw: bytes | str) -> Any:
    """Strict JSON: NaN and Infinity (which Python's json accepts) are malformed, and so are
    numbers that overflow to infinity (1e999) and nesting deeper than Python's recursion
    limit (a ValueError, not a RecursionError)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_object(raw: bytes | str) -> dict[str, Any]:
    """A JSON object body, or a 400 ApiError `invalid_json`."""
    try:
        data = json_loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"Malformed JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError("The request body must be a JSON object.", code="invalid_json")
    return data


class AnyContentJSONParser(BaseParser):
    """Parses the body as JSON whatever the Content-Type (curl -d sends a form type)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            return json_loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc


# --- strict fields -----------------------------------------------------------------------
# DRF's fields coerce ("0.5" -> 0.5, true -> 1, 12 -> "12"); an API contract should not, and
# a schema fuzzer counts every coercion as a schema violation accepted.


def text_check(value: str) -> str:
    """Text that every database can store: no NUL, no lone surrogates."""
    if "\x00" in value:
        raise serializers.ValidationError("must not contain NUL characters.", code="invalid_value")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError(
            "must be valid Unicode (a lone surrogate was sent).", code="invalid_value"
        ) from None
    return value


def _type_error(kind: str) -> None:
    raise serializers.ValidationError(f"must be {kind}.", code="invalid_type")


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            _type_error("a string")
        return text_check(super().to_internal_value(data))


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            _type_error("an integer")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            _type_error("a number")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            _type_error("true or false")
        return data


def too_large(field: str, size: int, limit: int, unit: str = "characters") -> ApiError:
    """The 413 `input_too_large` of every size limit on request input."""
    return ApiError(
        f"'{field}' is {size} {unit}; the limit is {limit}.",
        code="input_too_large",
        status=413,
        field=field,
    )


class LargeTextField(StrictCharField):
    """A text whose size limit answers 413 `input_too_large` (not a 400) beyond it."""

    def __init__(self, *, max_chars: Callable[[], int] | int, **kwargs):
        self.max_chars = max_chars
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        limit = self.max_chars() if callable(self.max_chars) else self.max_chars
        if len(value) > limit:
            raise too_large(self.field_name, len(value), limit)
        return value


def validate(serializer_class: type[serializers.Serializer], data: Any, **context) -> dict:
    """`serializer.is_valid(raise_exception=True)` for non-DRF callers: the validated data,
    or an ApiError in the one error shape."""
    serializer = serializer_class(data=data, context=context)
    try:
        serializer.is_valid(raise_exception=True)
    except serializers.ValidationError as exc:
        raise validation_error_to_api_error(exc) from None
    return serializer.validated_data


# --- pagination --------------------------------------------------------------------------


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """limit/offset with a ceiling; a bad value is a 400, never silently replaced."""

    default_limit = 50

    @property
    def max_limit(self) -> int:
        return settings.TOKENFLOW_MAX_PAGE_SIZE

    def _param(self, request, name: str, default: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) > high:
            raise ApiError(
                f"'{name}' must be an integer between 0 and {high}.",
                code="invalid",
                field=name,
            )
        return int(raw)

    def get_limit(self, request) -> int:
        limit = self._param(request, self.limit_query_param, self.default_limit, self.max_limit)
        return limit or self.default_limit

    def get_offset(self, request) -> int:
        return self._param(request, self.offset_query_param, 0, 10**9)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            bounds = {"limit": (0, self.max_limit), "offset": (0, 10**9)}.get(parameter["name"])
            if bounds:
                parameter["schema"].update(minimum=bounds[0], maximum=bounds[1])
        return parameters
