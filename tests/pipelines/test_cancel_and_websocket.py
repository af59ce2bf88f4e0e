"""Client disconnects cancel agents and aggregator; the WebSocket handler."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from pipelines.models import PipelineRun, RunAgent
from pipelines.services import ProcessRequest, process_events, process_start
from routing.consumers import GenerateConsumer
from routing.models import Generation
from tests.factories import mock_model
from tests.pipelines.factories import pipeline

pytestmark = pytest.mark.django_db(transaction=True)


async def start_run(pipe, message_id="c1", api_key=None):
    request = ProcessRequest(message="q", message_id=message_id, pipeline=pipe.name)
    return await sync_to_async(process_start)(request=request, api_key=api_key, transport="test")


async def test_disconnect_while_agents_run_cancels_them():
    pipe = await sync_to_async(pipeline)(
        agents={"fast": {"response": "x"}, "stuck": {"stall_after": 0}}
    )
    start = await start_run(pipe)
    events = process_events(start)
    async for event in events:
        if event.type == "agent_done":
            break
    await events.aclose()
    run = await PipelineRun.objects.aget(pk=start.run.pk)
    assert run.status == "cancelled"
    stuck = await RunAgent.objects.select_related("generation").aget(run=run, agent_name="stuck")
    assert stuck.status == "cancelled" and stuck.generation.status == "cancelled"
    # A cancelled run may run again under the same message_id (the client never got it).
    again = await start_run(pipe)
    assert not again.replay and again.run.pk == run.pk
    assert await RunAgent.objects.filter(run=run).acount() == 2


async def test_disconnect_while_aggregating_cancels_the_aggregator():
    slow = await sync_to_async(mock_model)(response="one two three four", token_delay=0.3)
    pipe = await sync_to_async(pipeline)(aggregator=slow, agents={"a": {"response": "x"}})
    start = await start_run(pipe, "c2")
    events = process_events(start)
    async for event in events:
        if event.type == "text":
            break
    await events.aclose()
    run = await PipelineRun.objects.select_related("aggregator_generation").aget(pk=start.run.pk)
    assert run.status == "cancelled" and run.aggregator_generation.status == "cancelled"


async def connect(api_key):
    communicator = WebsocketCommunicator(GenerateConsumer.as_asgi(), "/ws/generate/")
    communicator.scope["api_key"] = api_key
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive_until(communicator, last: str, timeout: float = 20) -> list[dict]:
    messages = []
    while not messages or messages[-1]["type"] not in (last, "error"):
        messages.append(await communicator.receive_json_from(timeout=timeout))
    return messages


async def test_websocket_process_streams_run_events(api_key):
    pipe = await sync_to_async(pipeline)(
        agents={"a": {"response": "alpha"}, "b": {"fail_after": 0}}
    )
    communicator = await connect(api_key[0])
    try:
        await communicator.send_json_to(
            {"type": "process", "message": "hi", "message_id": "w1", "pipeline": pipe.name}
        )
        sent = await receive_until(communicator, "end")
    finally:
        await communicator.disconnect()
    types = [m["type"] for m in sent]
    assert types[0] == "metadata" and types[-1] == "end"
    assert {"agent_done", "agent_failed", "token"} <= set(types)
    assert "alpha" in "".join(m["text"] for m in sent if m["type"] == "token")
    run = await PipelineRun.objects.aget(pk=sent[0]["run_id"])
    assert run.transport == "ws" and run.api_key_id == api_key[0].pk


async def test_websocket_process_bad_input_and_rate_limit(api_key, monkeypatch):
    communicator = await connect(api_key[0])
    try:
        await communicator.send_json_to({"type": "process", "message": "hi"})
        error = await communicator.receive_json_from(timeout=10)
    finally:
        await communicator.disconnect()
    assert error == {
        "type": "error",
        "status": 400,
        "code": "required",
        "message": "message_id: This field is required.",
        "field": "message_id",
    }
    key = api_key[0]
    key.requests_per_minute = 1
    await key.asave()
    from accounts import ratelimit

    monkeypatch.setattr(ratelimit, "_now", lambda: 6_000_000 * 60 + 1.0)
    await sync_to_async(ratelimit.rate_limit_reset)(api_key_id=key.pk)
    communicator = await connect(key)
    try:
        await communicator.send_json_to({"type": "process"})
        first = await communicator.receive_json_from(timeout=10)
        await communicator.send_json_to({"type": "generate", "model": "x", "prompt": "p"})
        second = await communicator.receive_json_from(timeout=10)
    finally:
        await communicator.disconnect()
    assert first["code"] == "required"
    assert second["code"] == "rate_limited" and second["status"] == 429
    assert second["retry_after"] > 0


async def test_over_a_real_websocket_cancel_stops_the_run(api_key):
    pipe = await sync_to_async(pipeline)(
        agents={"fast": {"response": "x"}, "stuck": {"stall_after": 0}}
    )
    communicator = await connect(api_key[0])
    try:
        await communicator.send_json_to(
            {"type": "process", "message": "q", "message_id": "ws1", "pipeline": pipe.name}
        )
        metadata = await communicator.receive_json_from(timeout=10)
        assert metadata["type"] == "metadata"
        assert (await communicator.receive_json_from(timeout=10))["type"] == "agent_done"
        await communicator.send_json_to({"type": "cancel"})
        for _ in range(100):
            run = await PipelineRun.objects.aget(pk=metadata["run_id"])
            if run.status != "running":
                break
            await asyncio.sleep(0.05)
        assert run.status == "cancelled"
        stuck = await Generation.objects.aget(pk=metadata["agents"][1]["generation_id"])
        assert stuck.status == "cancelled"
    finally:
        await communicator.disconnect()
