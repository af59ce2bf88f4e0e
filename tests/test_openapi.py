"""The published OpenAPI schema documents every HTTP route, the streaming responses and the
OpenAI surface; Swagger UI and Redoc load nothing from outside the server; drf-spectacular's
own validation passes with warnings as errors."""

import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

SSE, NDJSON, JSON = "text/event-stream", "application/x-ndjson", "application/json"

# The README's route map (HTTP), as the schema spells the paths.
ROUTE_MAP = [
    ("post", "/api/compress"),
    ("get", "/api/compressions"),
    ("get", "/api/compressions/{id}"),
    ("post", "/api/classify"),
    ("get", "/api/classifications"),
    ("get", "/api/classifications/{id}"),
    ("get", "/api/model-rankings"),
    ("post", "/api/generate"),
    ("post", "/api/models/select"),
    ("get", "/api/generations"),
    ("get", "/api/generations/{id}"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
]
ROUTE_MAP += [
    ("post", "/api/process"),
    ("get", "/api/process/{run_id}"),
    ("post", "/api/batches"),
    ("get", "/api/batches"),
    ("get", "/api/batches/{job_id}"),
    ("post", "/api/batches/{job_id}/pause"),
    ("post", "/api/batches/{job_id}/resume"),
    ("post", "/api/batches/{job_id}/cancel"),
    ("get", "/api/batches/{job_id}/results"),
    ("get", "/api/batches/{job_id}/items"),
]


@pytest.fixture(scope="module")
def openapi(django_db_blocker) -> dict:
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def _id(case) -> str:
    return f"{case[0].upper()} {case[1]}"


@pytest.mark.parametrize(
    "method, path",
    [
        *[pytest.param(*case, id=_id(case)) for case in ROUTE_MAP],
    ],
)
def test_schema_lists_every_route_of_the_route_map(openapi, method, path):
    paths = {_shape(p): operations for p, operations in openapi["paths"].items()}
    assert method in paths.get(_shape(path), {}), f"{method.upper()} {path} is not documented"


def _shape(path: str) -> str:
    """/api/batches/{job_id} -> /api/batches/{} (parameter names may differ)."""
    return re.sub(r"\{\w+\}", "{}", path)


def _django_api_paths(patterns=None, prefix: str = "") -> set[str]:
    """Every /api/ and /v1/ URL pattern, in OpenAPI spelling (<int:pk> -> {pk})."""
    paths = set()
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            paths |= _django_api_paths(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            paths.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return {p for p in paths if p.startswith(("/api/", "/v1/"))}


def test_schema_documents_every_api_url_pattern(openapi):
    """Not only the README's list: every routed /api/ and /v1/ URL (the schema and docs
    pages aside) is in the schema, so a new route cannot be forgotten."""
    undocumented_pages = {"/api/schema/", "/api/docs/", "/api/redoc/"}
    documented = {_shape(p) for p in openapi["paths"]}
    missing = sorted(
        path for path in _django_api_paths() - undocumented_pages if _shape(path) not in documented
    )
    assert not missing, f"routed but not in the OpenAPI schema: {missing}"


@pytest.mark.parametrize("path", ["/api/generate", "/api/models/select"])
def test_streaming_endpoints_document_sse_and_ndjson(openapi, path):
    content = openapi["paths"][path]["post"]["responses"]["200"]["content"]
    assert {SSE, NDJSON} <= set(content)
    sse = _resolve(openapi, content[SSE]["schema"])
    assert {"event", "data"} <= set(sse["properties"])
    names = set(_resolve(openapi, sse["properties"]["event"])["enum"])
    assert {"metadata", "text_chunk", "error", "end_stream"} <= names
    line = _resolve(openapi, content[NDJSON]["schema"])
    assert {"response", "done"} <= set(line["required"])
    assert {"metadata", "error", "usage"} <= set(line["properties"])
    parameters = {p["name"]: p for p in openapi["paths"][path]["post"].get("parameters", [])}
    assert set(_resolve(openapi, parameters["format"]["schema"])["enum"]) == {"sse", "ndjson"}


def test_chat_completions_documents_json_and_sse(openapi):
    operation = openapi["paths"]["/v1/chat/completions"]["post"]
    content = operation["responses"]["200"]["content"]
    assert {JSON, SSE} <= set(content)
    completion = _resolve(openapi, content[JSON]["schema"])
    assert {"id", "object", "choices", "usage"} <= set(completion["properties"])
    assert "data" in _resolve(openapi, content[SSE]["schema"])["properties"]
    # Every /v1/ error, the front door's included, is documented in OpenAI's shape.
    for status in ("400", "401", "404", "405", "429"):
        error = _resolve(openapi, operation["responses"][status]["content"][JSON]["schema"])
        detail = _resolve(openapi, error["properties"]["error"])
        assert {"message", "type", "param", "code"} <= set(detail["properties"]), status


def test_v1_models_is_documented(openapi):
    content = openapi["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    assert "data" in _resolve(openapi, content[JSON]["schema"])["properties"]


# File uploads are multipart only (OpenAI's Files API).
MULTIPART_ONLY = {("post", "/v1/files")}


def test_request_bodies_are_json(openapi):
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body and (method, path) not in MULTIPART_ONLY:
                assert JSON in body["content"], f"{method.upper()} {path}"
                assert "*/*" not in body["content"], f"{method.upper()} {path}"


def _resolve(openapi: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _resolve(openapi, schema["allOf"][0])
    if "oneOf" in schema and "properties" not in schema and "enum" not in schema:
        return _resolve(openapi, schema["oneOf"][0])
    return schema


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_load_only_local_assets(client, page):
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    external = re.findall(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"'<>]*""", html)
    assert not external, f"{page} loads from outside the server: {external}"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, f"{page} loads no script"
    for asset in assets:
        assert asset.startswith(f"/{settings.STATIC_URL.strip('/')}/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content if served.streaming else [served.content])


def test_swagger_ui_points_at_the_local_schema(client):
    html = client.get("/api/docs/").content.decode()
    assert "/api/schema/" in html


def test_spectacular_validate_fail_on_warn(tmp_path):
    """drf-spectacular's own check: the schema is valid OpenAPI 3 and generating it raised no
    warning (an unresolvable serializer, a missing type hint, a name collision...)."""
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--file",
            str(tmp_path / "schema.yaml"),
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
