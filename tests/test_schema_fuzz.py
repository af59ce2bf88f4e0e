"""Schemathesis over the published OpenAPI schema, through the production ASGI app.

Every documented operation gets valid (positive) and schema-violating (negative) requests
with a fixed seed and a small budget. Checks: no 5xx, responses match their documented
schema, status code and content type, and schema-violating requests are rejected with a
4xx. Models are mock-provider rows, the classifier is the keyword fake and the compressor
a truncating fake: no model loads, so the run is fast and repeatable (SQLite or
PostgreSQL, whichever DATABASE_URL says).
"""

import json

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.converter import to_json_schema

from accounts.models import ApiKey
from compression.engines import reset_compressors
from routing.models import CategoryRoute, ModelRanking
from tests.factories import mock_model, route
from tokenflow_site.asgi import application

MAX_EXAMPLES = 10  # per operation and generation mode
NDJSON = "application/x-ndjson"


def ndjson_lines_conform(ctx, response, case) -> bool | None:
    """Every NDJSON line matches the documented line schema (schemathesis reads SSE events
    itself, but has no reader for NDJSON)."""
    if not response.headers.get("content-type", [""])[0].startswith(NDJSON):
        return None
    raw = case.operation.schema.raw_schema
    operation = raw["paths"][case.operation.path][case.method.lower()]
    line_schema = operation["responses"][str(response.status_code)]["content"][NDJSON]["schema"]
    components = {
        name: to_json_schema(component, "nullable", is_response_schema=True)
        for name, component in raw["components"]["schemas"].items()
    }
    validator = jsonschema.Draft7Validator(
        {**to_json_schema(line_schema, "nullable"), "components": {"schemas": components}}
    )
    # NDJSON lines end at "\n" only (str.splitlines would also split at U+2028, U+001C...,
    # which JSON leaves unescaped inside strings).
    lines = [line for line in response.content.decode().split("\n") if line]
    assert lines, "an NDJSON stream has at least one line"
    for number, line in enumerate(lines, 1):
        errors = sorted(validator.iter_errors(json.loads(line)), key=str)
        assert not errors, f"NDJSON line {number} violates the schema: {errors[0].message}"
    assert json.loads(lines[-1])["done"] is True, "the last NDJSON line has done: true"
    return True


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
    ndjson_lines_conform,
]

schema = schemathesis.openapi.from_asgi("/api/schema/?format=json", application)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    database="none",
)

# A schema-violating request may also be rejected as too large (413 input_too_large).
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]

FUZZ_MODEL = "mock/fuzz"


@pytest.fixture
def fuzz_key(transactional_db, settings) -> str:
    """A fast, model-free site: mock models and routes, fake classifier and compressor."""
    settings.TOKENFLOW_CLASSIFIER = "tests.routing.fake_classifier.KeywordClassifier"
    settings.TOKENFLOW_CLASSIFIER_MODEL = ""
    # The published engine names (the schema's enum), served by a model-free fake.
    fake = "tests.compression.fake_compressor.TruncatingCompressor"
    engines = settings.TOKENFLOW_COMPRESSOR_ENGINES
    settings.TOKENFLOW_COMPRESSOR_ENGINES = dict.fromkeys(engines, fake)
    methods = settings.TOKENFLOW_COMPRESSOR_METHOD_BACKENDS
    settings.TOKENFLOW_COMPRESSOR_METHOD_BACKENDS = dict.fromkeys(methods, fake)
    settings.TOKENFLOW_RETRY_BACKOFF = 0.001
    reset_compressors()
    # Only mock models can serve (the seeded local model would load real weights).
    CategoryRoute.objects.all().delete()
    ModelRanking.objects.exclude(provider=ModelRanking.Provider.MOCK).update(enabled=False)
    model = mock_model(FUZZ_MODEL, response="fuzzed answer")
    for category in ("coding", "chat"):
        route(category, model)
    _row, raw = ApiKey.issue(name="fuzz")
    yield raw
    reset_compressors()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS)


def test_fuzz_covers_every_published_operation():
    """Nothing is left out: every published operation is fuzzed."""
    fuzzed = {(op.method, op.path) for op in (r.ok() for r in schema.get_all_operations())}
    published = {
        (method, path)
        for path, operations in schema.raw_schema["paths"].items()
        for method in operations
    }
    assert fuzzed == published
    assert ("post", "/api/generate") in fuzzed and ("post", "/v1/chat/completions") in fuzzed
