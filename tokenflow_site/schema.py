"""OpenAPI generation: the request media type, cross-field rules, and the one error shape
on every operation.

Every /api/ and /v1/ operation can answer 400 (bad input), 401 (no or bad key), 403 (a
non-staff session, CSRF), 404, 405, 413 (too large) and 429 (rate limit); listing them once
here keeps the schema honest without repeating them on every view. /v1/ errors use OpenAI's
shape (the `OpenAIError` component, tokenflow_site.errors.openai_error_response).
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema

JSON = "application/json"


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's AutoSchema with two TokenFlow rules:

    - The request body is documented as `application/json`: the parser reads JSON whatever
      the Content-Type says (`*/*`), but JSON is what clients should send.
    - A serializer may define `openapi_request_schema(schema)` to add what fields cannot
      say on their own (exactly one of two fields, limits read from settings at schema
      time); it edits its request component in place.
    """

    def map_parsers(self):
        return list(dict.fromkeys(JSON if m == "*/*" else m for m in super().map_parsers()))

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        extend = getattr(serializer, "openapi_request_schema", None)
        if direction == "request" and extend is not None:
            extend(schema)
        return schema


def exactly_one_of(schema: dict, first: str, second: str) -> None:
    """`first` or `second` (non-null), not both: what the serializer's validate() enforces."""
    properties = schema.get("properties", {})

    def present(name: str) -> dict:
        prop = {key: value for key, value in properties[name].items() if key != "nullable"}
        return {"required": [name], "properties": {name: prop}}

    schema["oneOf"] = [present(first), present(second)]


NOT_BLANK = r"\S"  # at least one non-whitespace character (validators reject blank text)


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code."},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The request field at fault."},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

COMMON_ERRORS = {
    "400": "Bad input: malformed JSON or a field that fails validation (`field` names it).",
    "401": "Missing, invalid or revoked API key.",
    "403": "Not allowed: a non-staff or inactive session, or a failed CSRF check.",
    "404": "No such route or record (another key's record is a 404 too).",
    "405": "Method not allowed on this route.",
    "413": "Input larger than the configured limit.",
    "429": "Rate limit exceeded (`Retry-After` says when to retry).",
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOK: an `Error` component and the common error
    responses on every operation that does not document them itself."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", ERROR_SCHEMA)
    for path, operations in result.get("paths", {}).items():
        openai = path.startswith("/v1/") and "OpenAIError" in schemas
        ref = {"$ref": "#/components/schemas/" + ("OpenAIError" if openai else "Error")}
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in COMMON_ERRORS.items():
                responses.setdefault(
                    status,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    return result
