"""POST /api/process and GET /api/process/<id> with mock agents of fixed latency."""

import time

import pytest
from asgiref.sync import sync_to_async

from pipelines.models import Agent, PipelineRun, RunAgent
from routing.models import Generation
from routing.providers.mock import mock_calls
from tests.factories import mock_model
from tests.pipelines.factories import pipeline

pytestmark = pytest.mark.django_db(transaction=True)


def names(events):
    return [name for name, _ in events]


def text_of(events):
    return "".join(data["text"] for name, data in events if name == "text_chunk")


async def make(**kwargs):
    return await sync_to_async(pipeline)(**kwargs)


async def test_agents_run_concurrently_and_events_arrive_as_they_finish(async_client, auth, sse):
    # Three agents of 0.2 s, 1.0 s and 1.0 s: sequential would take 2.2 s, concurrent ~1 s.
    await make(
        name="conc",
        agents={
            "slow1": {"response": "slow one", "first_token_delay": 1.0},
            "fast": {"response": "fast answer", "first_token_delay": 0.2},
            "slow2": {"response": "slow two", "first_token_delay": 1.0},
        },
    )
    started = time.monotonic()
    response, events = await sse(
        async_client, auth, {"message": "hi", "message_id": "m1", "pipeline": "conc"}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert names(events)[0] == "metadata" and names(events)[-1] == "end_stream"
    meta = events[0][1]
    assert meta["pipeline"] == "conc" and [a["name"] for a in meta["agents"]] == [
        "slow1",
        "fast",
        "slow2",
    ]
    done = [data["agent"] for name, data in events if name == "agent_done"]
    assert done[0] == "fast" and sorted(done) == ["fast", "slow1", "slow2"]
    # Every agent event comes before the first aggregated chunk.
    assert names(events).index("text_chunk") > max(
        i for i, n in enumerate(names(events)) if n == "agent_done"
    )
    run = await PipelineRun.objects.aget(pk=meta["run_id"])
    assert run.status == "completed" and run.missing == []
    # Near the slowest agent (1 s), far from the sum (2.2 s): wide margins for a noisy box.
    assert run.agents_ms < 1900, run.agents_ms
    assert elapsed < 2.2 * 3
    for answer in ("slow one", "fast answer", "slow two", "Q: hi"):
        assert answer in text_of(events)
    assert events[-1][1]["run_id"] == run.pk and events[-1][1]["usage"]["total_tokens"] > 0


async def test_one_failing_agent_aggregator_is_told_what_is_missing(async_client, auth, sse):
    await make(
        name="partial",
        agents={
            "good": {"response": "solid answer"},
            "broken": {"fail_before_first": 400},
        },
    )
    _, events = await sse(
        async_client, auth, {"message": "q", "message_id": "m2", "pipeline": "partial"}
    )
    failed = [data for name, data in events if name == "agent_failed"]
    assert len(failed) == 1 and failed[0]["agent"] == "broken"
    assert failed[0]["reason"] and failed[0]["code"] and failed[0]["duration_ms"] >= 0
    answer = text_of(events)
    assert "solid answer" in answer and "Missing perspectives: broken (failed)" in answer
    assert names(events)[-1] == "end_stream" and events[-1][1]["missing"] == ["broken"]
    run = await PipelineRun.objects.aget(pk=events[0][1]["run_id"])
    assert run.status == "completed" and run.missing == ["broken"]
    link = await RunAgent.objects.select_related("generation").aget(run=run, agent_name="broken")
    assert link.status == "failed" and link.generation.status == "failed"


async def test_all_agents_failing_ends_with_an_error_event(async_client, auth, sse):
    await make(
        name="doomed",
        agents={"a": {"fail_before_first": 400}, "b": {"fail_after": 0}},
    )
    _, events = await sse(
        async_client, auth, {"message": "q", "message_id": "m3", "pipeline": "doomed"}
    )
    assert names(events).count("agent_failed") == 2
    assert names(events)[-1] == "error" and "text_chunk" not in names(events)
    error = events[-1][1]
    assert error["code"] == "all_agents_failed" and {f["agent"] for f in error["failures"]} == {
        "a",
        "b",
    }
    run = await PipelineRun.objects.aget(pk=error["run_id"])
    assert run.status == "failed" and run.aggregator_generation_id is None


async def test_agent_timeout_is_a_failure_and_the_run_goes_on(async_client, auth, sse):
    await make(
        name="slowpoke",
        agents={
            "ok": {"response": "here"},
            "stuck": {"stall_after": 0, "timeout_seconds": 0.3},
        },
    )
    started = time.monotonic()
    _, events = await sse(
        async_client, auth, {"message": "q", "message_id": "m4", "pipeline": "slowpoke"}
    )
    assert time.monotonic() - started < 10
    failed = [data for name, data in events if name == "agent_failed"]
    assert failed[0]["agent"] == "stuck" and failed[0]["code"] == "timeout"
    assert "stuck (timed out)" in text_of(events) and names(events)[-1] == "end_stream"
    row = await Generation.objects.aget(pk=failed[0]["generation_id"])
    assert row.status == "failed" and row.error_code == "timeout"


async def test_overall_deadline_bounds_agents_and_aggregator(async_client, auth, sse):
    stalled = await sync_to_async(mock_model)(response="a b c", stall_after=1)
    await make(
        name="deadline",
        aggregator=stalled,
        deadline_seconds=1.0,
        agents={"ok": {"response": "fine"}, "stuck": {"stall_after": 0, "timeout_seconds": 60}},
    )
    started = time.monotonic()
    _, events = await sse(
        async_client, auth, {"message": "q", "message_id": "m5", "pipeline": "deadline"}
    )
    assert time.monotonic() - started < 10
    failed = [data for name, data in events if name == "agent_failed"]
    assert failed[0]["code"] == "deadline_exceeded"
    assert names(events)[-1] == "error" and events[-1][1]["code"] == "deadline_exceeded"
    run = await PipelineRun.objects.select_related("aggregator_generation").aget(
        pk=events[0][1]["run_id"]
    )
    assert run.status == "failed" and run.aggregator_generation.status == "failed"


async def test_same_message_id_replays_the_stored_run(async_client, auth, sse):
    await make(name="idem", agents={"a": {"response": "alpha"}})
    payload = {"message": "q", "message_id": "same", "pipeline": "idem"}
    _, first = await sse(async_client, auth, payload)
    agent_model = await sync_to_async(lambda: Agent.objects.get(name="a").model.name)()
    calls = mock_calls(agent_model)
    response, again = await sse(async_client, auth, payload)
    assert response["X-TokenFlow-Replayed"] == "true"
    assert mock_calls(agent_model) == calls  # nothing ran again
    assert again[0][1]["replayed"] is True and again[0][1]["run_id"] == first[0][1]["run_id"]
    assert text_of(again) == text_of(first) and names(again)[-1] == "end_stream"
    assert [n for n in names(again) if n.startswith("agent")] == ["agent_done"]
    assert await PipelineRun.objects.acount() == 1


async def test_failed_run_is_replayed_too(async_client, auth, sse):
    await make(name="idemfail", agents={"a": {"fail_before_first": 400}})
    payload = {"message": "q", "message_id": "f", "pipeline": "idemfail"}
    _, first = await sse(async_client, auth, payload)
    _, again = await sse(async_client, auth, payload)
    assert again[0][1]["replayed"] is True and names(again) == names(first)
    assert again[-1][1]["code"] == first[-1][1]["code"] == "all_agents_failed"
    assert again[-1][1]["message"] == first[-1][1]["message"]


async def test_running_message_id_is_409_and_other_message_is_409(async_client, auth, api_key, sse):
    pipe = await make(name="busy", agents={"a": {}})
    await PipelineRun.objects.acreate(
        pipeline=pipe, api_key=api_key[0], message_id="dup", message="q"
    )
    response, _ = await sse(
        async_client, auth, {"message": "q", "message_id": "dup", "pipeline": "busy"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "run_in_progress"
    response, _ = await sse(
        async_client, auth, {"message": "other", "message_id": "dup", "pipeline": "busy"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "message_id_conflict"


async def test_message_ids_are_scoped_per_api_key(async_client, auth, sse):
    from accounts.models import ApiKey

    await make(name="scoped", agents={"a": {"response": "x"}})
    payload = {"message": "q", "message_id": "shared", "pipeline": "scoped"}
    _, first = await sse(async_client, auth, payload)
    _, raw = await sync_to_async(ApiKey.issue)(name="other")
    _, second = await sse(async_client, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}, payload)
    assert second[0][1]["replayed"] is False
    assert second[0][1]["run_id"] != first[0][1]["run_id"]


async def test_conversation_history_is_passed_to_agents(async_client, auth, sse):
    await make(name="chat", agents={"a": {"response": "first answer", "system_prompt": "Be A."}})
    _, first = await sse(
        async_client, auth, {"message": "turn one", "message_id": "t1", "pipeline": "chat"}
    )
    conversation = first[0][1]["conversation_id"]
    assert conversation
    _, second = await sse(
        async_client,
        auth,
        {
            "message": "turn two",
            "message_id": "t2",
            "pipeline": "chat",
            "conversation_id": conversation,
        },
    )
    assert second[0][1]["conversation_id"] == conversation
    generation = await Generation.objects.aget(pk=second[0][1]["agents"][0]["generation_id"])
    first_answer = text_of(first)
    assert generation.input_messages == [
        {"role": "system", "content": "Be A."},
        {"role": "user", "content": "turn one"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "turn two"},
    ]
    # A new conversation starts empty.
    _, third = await sse(
        async_client, auth, {"message": "fresh", "message_id": "t3", "pipeline": "chat"}
    )
    assert third[0][1]["conversation_id"] != conversation
    fresh = await Generation.objects.aget(pk=third[0][1]["agents"][0]["generation_id"])
    assert len(fresh.input_messages) == 2


async def test_ndjson_format(async_client, auth):
    await sync_to_async(pipeline)(name="nd", agents={"a": {"response": "x"}})
    response = await async_client.post(
        "/api/process?format=ndjson",
        {"message": "q", "message_id": "n1", "pipeline": "nd"},
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    body = b"".join([c async for c in response.streaming_content]).decode()
    lines = [line for line in body.splitlines() if line]
    assert response["Content-Type"] == "application/x-ndjson"
    assert '"done":true' in lines[-1] and '"metadata"' in lines[0]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"message_id": "x"}, 400, "required"),
        ({"message": "hi"}, 400, "required"),
        ({"message": "  ", "message_id": "x"}, 400, "empty"),
        ({"message": "hi", "message_id": ["x"]}, 400, "invalid_type"),
        ({"message": "hi", "message_id": "x", "pipeline": "nope"}, 404, "pipeline_not_found"),
        ({"message": "hi", "message_id": "x", "pipeline": "empty"}, 409, "pipeline_has_no_agents"),
        ({"message": "x" * 30, "message_id": "x", "pipeline": "empty"}, 413, "input_too_large"),
    ],
)
async def test_bad_input_is_a_clear_json_error(
    async_client, auth, sse, settings, payload, status, code
):
    settings.TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS = 20
    await make(name="empty", agents={"off": {"enabled": False}})
    response, events = await sse(async_client, auth, payload)
    assert events is None and response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_malformed_json_and_missing_key(async_client, auth):
    response = await async_client.post(
        "/api/process",
        "{nope",
        content_type="application/json",
        headers={"Authorization": auth["HTTP_AUTHORIZATION"]},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = await async_client.post("/api/process", {}, content_type="application/json")
    assert response.status_code == 401


async def test_run_is_readable_by_its_key_only(async_client, auth, sse):
    from accounts.models import ApiKey

    await make(name="read", agents={"a": {"response": "alpha"}, "b": {"fail_before_first": 400}})
    _, events = await sse(
        async_client, auth, {"message": "q", "message_id": "r1", "pipeline": "read"}
    )
    run_id = events[0][1]["run_id"]
    response = await async_client.get(
        f"/api/process/{run_id}", headers={"Authorization": auth["HTTP_AUTHORIZATION"]}
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "completed"
    assert body["answer"] == text_of(events) and body["missing"] == ["b"]
    assert [a["status"] for a in body["agents"]] == ["done", "failed"]
    assert body["agents"][0]["text"] == "alpha" and body["aggregator"]["status"] == "completed"
    _, raw = await sync_to_async(ApiKey.issue)(name="stranger")
    response = await async_client.get(
        f"/api/process/{run_id}", headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 404


async def test_stream_agents_sends_each_agents_text_as_it_streams(async_client, auth, sse):
    await make(
        name="deltas",
        agents={
            "quick": {"response": "one two three four", "token_delay": 0.05},
            "steady": {"response": "slow steady words", "token_delay": 0.15},
            "stuck": {"response": "half said then", "stall_after": 2, "timeout_seconds": 1.0},
        },
    )
    payload = {"message": "q", "message_id": "d1", "pipeline": "deltas", "stream_agents": True}
    _, events = await sse(async_client, auth, payload)
    order = names(events)
    assert order[0] == "metadata" and order[-1] == "end_stream"
    deltas = [(i, data) for i, (name, data) in enumerate(events) if name == "agent_delta"]
    finished = {
        data["agent"]: (i, data)
        for i, (name, data) in enumerate(events)
        if name in ("agent_done", "agent_failed")
    }
    for agent in ("quick", "steady", "stuck"):
        mine = [(i, d) for i, d in deltas if d["agent"] == agent]
        assert len(mine) >= 2, agent  # token by token, not one block
        assert all(i < finished[agent][0] for i, _ in mine)  # all before its end event
        assert {d["generation_id"] for _, d in mine} == {finished[agent][1]["generation_id"]}
    text = {a: "".join(d["text"] for _, d in deltas if d["agent"] == a) for a in finished}
    assert text["quick"] == finished["quick"][1]["text"] == "one two three four"
    assert text["steady"] == finished["steady"][1]["text"]
    # The stuck agent's partial text arrived, then it failed on its timeout.
    assert text["stuck"] and finished["stuck"][1]["code"] == "timeout"
    # Concurrent: the slow agent had streamed text before the quick one finished.
    first_steady = min(i for i, d in deltas if d["agent"] == "steady")
    assert first_steady < finished["quick"][0]
    # Every delta comes before the aggregated answer.
    assert max(i for i, _ in deltas) < order.index("text_chunk")

    # Without the flag (and on replay) the stream has no agent_delta.
    _, plain = await sse(
        async_client, auth, {**payload, "message_id": "d2", "stream_agents": False}
    )
    assert "agent_delta" not in names(plain) and "agent_done" in names(plain)
    _, replay = await sse(async_client, auth, payload)
    assert replay[0][1]["replayed"] and "agent_delta" not in names(replay)


async def test_stream_agents_must_be_a_boolean(async_client, auth, sse):
    await make(name="flag", agents={"a": {"response": "x"}})
    payload = {"message": "q", "message_id": "f", "pipeline": "flag", "stream_agents": "yes"}
    response, events = await sse(async_client, auth, payload)
    assert events is None and response.status_code == 400
    assert response.json()["error"]["field"] == "stream_agents"
    assert not await PipelineRun.objects.filter(message_id="f").aexists()
