"""OpenAPI: the schema class and post-processing (the one error shape on every operation).

Every /api/ and /v1/ operation can answer 400 (bad input), 401 (no or bad key), 403 (a
non-staff session, CSRF), 404, 413 (too large) and 429 (rate limit); listing them once
here keeps the schema honest without repeating them on every view.
"""

from drf_spectacular.openapi import AutoSchema

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
    ref = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
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


class TokenFlowAutoSchema(AutoSchema):
    """Request bodies are JSON: the parser accepts any Content-Type (curl -d), but the
    schema documents application/json rather than */*."""

    def map_parsers(self):
        return list(
            dict.fromkeys("application/json" if m == "*/*" else m for m in super().map_parsers())
        )
