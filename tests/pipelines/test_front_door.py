"""/api/process through the front door: any Content-Type, strict fields naming the field,
ownership of runs through the Principal, replay equal to live, NDJSON lines, OpenAPI."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator

from accounts.models import ApiKey
from pipelines.models import Agent, PipelineRun
from tests.factories import mock_model
from tests.pipelines.factories import pipeline
from tests.streams import parse_sse, read_body

pytestmark = pytest.mark.django_db(transaction=True)


async def make(**kwargs):
    return await sync_to_async(pipeline)(**kwargs)


async def test_process_body_without_content_type_is_json(auth):
    from tokenflow_site.asgi import application

    await make(name="bare", agents={"a": {"response": "alpha"}})
    body = json.dumps({"message": "q", "message_id": "bare1", "pipeline": "bare"}).encode()
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": "/api/process",
            "query_string": b"",
            "headers": [  # no content-type
                (b"host", b"localhost"),
                (b"authorization", auth["HTTP_AUTHORIZATION"].encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        },
    )
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(timeout=30)
    chunks = []
    while True:
        message = await communicator.receive_output(timeout=30)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=30)
    assert start["status"] == 200
    events = parse_sse(b"".join(chunks).decode())
    assert events[0][0] == "metadata" and events[-1][0] == "end_stream"


async def test_process_body_with_a_form_content_type_is_json(async_client, auth):
    # What `curl -d` sends when no -H 'Content-Type: application/json' is given.
    await make(name="form", agents={"a": {"response": "alpha"}})
    response = await async_client.post(
        "/api/process",
        json.dumps({"message": "q", "message_id": "form1", "pipeline": "form"}),
        content_type="application/x-www-form-urlencoded",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    assert response.status_code == 200
    assert parse_sse(await read_body(response))[-1][0] == "end_stream"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message", 5),
        ("message", ["hi"]),
        ("message_id", True),
        ("message_id", {"id": 1}),
        ("message_id", 1.5),
        ("pipeline", 3.5),
        ("pipeline", ["p"]),
        ("conversation_id", []),
        ("conversation_id", False),
    ],
)
async def test_wrong_field_type_is_400_naming_the_field(async_client, auth, field, value):
    payload = {"message": "hi", "message_id": "t1", field: value}
    response = await async_client.post(
        "/api/process",
        payload,
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_type" and error["field"] == field
    assert await PipelineRun.objects.acount() == 0


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"message": "hi", "message_id": "x" * 201}, "too_long", "message_id"),
        ({"message": "hi", "message_id": ""}, "empty", "message_id"),
        ({"message": "hi", "message_id": "x", "pipeline": "  "}, "empty", "pipeline"),
        ({"message": None, "message_id": "x"}, "required", "message"),
    ],
)
async def test_other_field_mistakes_name_the_field(async_client, auth, payload, code, field):
    response = await async_client.post(
        "/api/process",
        payload,
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    assert response.status_code == 400
    assert response.json()["error"] == {**response.json()["error"], "code": code, "field": field}


async def test_numeric_message_id_and_null_pipeline_are_accepted(async_client, auth, settings):
    settings.TOKENFLOW_DEFAULT_PIPELINE = "fallback"
    await make(name="fallback", agents={"a": {"response": "alpha"}})
    response = await async_client.post(
        "/api/process",
        {"message": "q", "message_id": 42, "pipeline": None},
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    events = parse_sse(await read_body(response))
    assert events[0][1]["message_id"] == "42" and events[0][1]["pipeline"] == "fallback"


async def _run_of(api_key: ApiKey) -> PipelineRun:
    pipe = await make(agents={"a": {}})
    return await PipelineRun.objects.acreate(
        pipeline=pipe, api_key=api_key, message_id="owned", message="q"
    )


async def test_key_a_cannot_read_key_b_run(async_client, auth):
    _, raw_b = await sync_to_async(ApiKey.issue)(name="b")
    key_b = await ApiKey.objects.aget(name="b")
    run = await _run_of(key_b)
    foreign = await async_client.get(
        f"/api/process/{run.pk}", headers={"Authorization": auth["HTTP_AUTHORIZATION"]}
    )
    missing = await async_client.get(
        f"/api/process/{run.pk + 1000}", headers={"Authorization": auth["HTTP_AUTHORIZATION"]}
    )
    # Someone else's run is the same 404 as a missing one.
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    own = await async_client.get(
        f"/api/process/{run.pk}", headers={"Authorization": f"Bearer {raw_b}"}
    )
    assert own.status_code == 200 and own.json()["id"] == run.pk


def test_staff_session_reads_every_run_and_other_sessions_are_refused(
    staff_client, client, django_user_model
):
    key, _ = ApiKey.issue(name="someone")
    run = PipelineRun.objects.create(
        pipeline=pipeline(agents={"a": {}}), api_key=key, message_id="m", message="q"
    )
    response = staff_client.get(f"/api/process/{run.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == run.pk and body["status"] == "running" and body["error"] is None
    assert body["aggregator"] is None and body["agents"] == []
    user = django_user_model.objects.create_user("plain", password="pw")
    client.force_login(user)
    assert client.get(f"/api/process/{run.pk}").status_code == 403


def test_run_detail_is_read_only(client, auth, api_key):
    run = PipelineRun.objects.create(
        pipeline=pipeline(agents={"a": {}}), api_key=api_key[0], message_id="m", message="q"
    )
    response = client.post(f"/api/process/{run.pk}", {}, content_type="application/json", **auth)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_replay_repeats_the_live_metadata_and_agent_events(async_client, auth, sse):
    await make(
        name="same",
        agents={"ok": {"response": "alpha"}, "broken": {"fail_before_first": 400}},
    )
    payload = {"message": "q", "message_id": "rep", "pipeline": "same"}
    _, live = await sse(async_client, auth, payload)
    _, replay = await sse(async_client, auth, payload)
    assert {**live[0][1], "replayed": True} == replay[0][1]

    def agents(events):
        found = [d for n, d in events if n in ("agent_done", "agent_failed")]
        return sorted(found, key=lambda d: d["agent"])

    assert agents(live) == agents(replay) and len(agents(live)) == 2
    assert live[-1] == replay[-1] and live[-1][0] == "end_stream"


async def test_process_websocket_validates_with_the_same_serializer(api_key):
    from tests.pipelines.test_cancel_and_websocket import connect

    communicator = await connect(api_key[0])
    try:
        await communicator.send_json_to(
            {"type": "process", "message": "hi", "message_id": "w", "pipeline": 7.5}
        )
        error = await communicator.receive_json_from(timeout=10)
    finally:
        await communicator.disconnect()
    assert error["type"] == "error" and error["status"] == 400
    assert error["code"] == "invalid_type" and error["field"] == "pipeline"


async def _ndjson_lines(async_client, auth, payload) -> list[dict]:
    response = await async_client.post(
        "/api/process?format=ndjson",
        payload,
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    assert response["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in (await read_body(response)).splitlines() if line]


async def test_every_ndjson_line_of_a_process_stream_has_response_and_done(async_client, auth):
    await make(name="ndok", agents={"a": {"response": "x"}})
    await make(name="ndfail", agents={"a": {"fail_before_first": 400}})
    ok = await _ndjson_lines(
        async_client, auth, {"message": "q", "message_id": "n1", "pipeline": "ndok"}
    )
    failed = await _ndjson_lines(
        async_client, auth, {"message": "q", "message_id": "n2", "pipeline": "ndfail"}
    )
    assert "metadata" in ok[0] and ok[-1]["done"] is True and failed[-1]["done"] is True
    for line in ok + failed:
        assert isinstance(line["response"], str) and isinstance(line["done"], bool), line


async def test_ndjson_process_stream_ends_done_with_the_run_summary(async_client, auth):
    await make(name="ndsum", agents={"a": {"response": "x"}})
    lines = await _ndjson_lines(
        async_client, auth, {"message": "q", "message_id": "n3", "pipeline": "ndsum"}
    )
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[0]["metadata"]["pipeline"] == "ndsum"
    assert lines[-1]["status"] == "completed" and lines[-1]["run_id"]
    assert "".join(line.get("response", "") for line in lines).endswith("Q: q\nA:\n[a]\nx")


def test_openapi_documents_both_process_operations(client):
    schema = client.get("/api/schema/?format=json").json()
    post = schema["paths"]["/api/process"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProcessRequestRequest"
    )
    ok = post["responses"]["200"]
    assert {"text/event-stream", "application/x-ndjson"} <= set(ok["content"])
    for event in ("metadata", "agent_done", "agent_failed", "text_chunk", "info", "error"):
        assert f"`{event}`" in ok["description"]
    assert "`end_stream`" in ok["description"]
    assert {"400", "404", "409", "413"} <= set(post["responses"])
    get = schema["paths"]["/api/process/{run_id}"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Run")
    assert "404" in get["responses"]


async def test_agent_on_a_disabled_model_fails_alike_live_and_on_replay(async_client, auth, sse):
    await make(name="offmodel", agents={"ok": {"response": "alpha"}, "off": {}})

    def disable() -> str:
        model = Agent.objects.get(name="off").model
        model.enabled = False
        model.save()
        return model.name

    model_name = await sync_to_async(disable)()
    payload = {"message": "q", "message_id": "off1", "pipeline": "offmodel"}
    _, live = await sse(async_client, auth, payload)
    _, replay = await sse(async_client, auth, payload)
    for events in (live, replay):
        failed = [data for name, data in events if name == "agent_failed"]
        assert failed == [
            {
                "agent": "off",
                "model": model_name,
                "generation_id": None,
                "duration_ms": 0.0,
                "code": "model_disabled",
                "reason": f"Model {model_name} is disabled.",
            }
        ]
        assert events[-1][0] == "end_stream" and events[-1][1]["missing"] == ["off"]


async def test_failed_aggregator_error_is_the_same_live_and_on_replay(async_client, auth, sse):
    broken = await sync_to_async(mock_model)(fail_before_first=400)
    await make(name="badagg", aggregator=broken, agents={"a": {"response": "alpha"}})
    payload = {"message": "q", "message_id": "agg1", "pipeline": "badagg"}
    _, live = await sse(async_client, auth, payload)
    _, replay = await sse(async_client, auth, payload)
    assert live[-1][0] == replay[-1][0] == "error"
    error = live[-1][1]
    assert error["message"].startswith("Aggregator: ") and error["generation_id"]
    assert error["status"] == 400  # live only: the HTTP status of the upstream failure
    stored = {k: v for k, v in error.items() if k not in ("status", "retry_after")}
    assert replay[-1][1] == stored
    run = await PipelineRun.objects.aget(pk=error["run_id"])
    assert run.status == "failed" and run.error_code == error["code"]
