"""Client disconnects cancel agents and aggregator; the WebSocket handler."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from pipelines.models import PipelineRun, RunAgent
from pipelines.services import ProcessRequest, process_events, process_start
from pipelines.websocket import process_over_websocket
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


class FakeConsumer:
    """The two things the handler uses: scope and send_json."""

    def __init__(self, api_key=None):
        self.scope = {"api_key": api_key}
        self.sent: list[dict] = []

    async def send_json(self, content):
        self.sent.append(content)


async def test_websocket_handler_streams_run_events(api_key):
    pipe = await sync_to_async(pipeline)(
        agents={"a": {"response": "alpha"}, "b": {"fail_after": 0}}
    )
    consumer = FakeConsumer(api_key[0])
    await process_over_websocket(
        consumer, {"type": "process", "message": "hi", "message_id": "w1", "pipeline": pipe.name}
    )
    types = [m["type"] for m in consumer.sent]
    assert types[0] == "metadata" and types[-1] == "end"
    assert {"agent_done", "agent_failed", "token"} <= set(types)
    assert "alpha" in "".join(m["text"] for m in consumer.sent if m["type"] == "token")
    run = await PipelineRun.objects.aget(pk=consumer.sent[0]["run_id"])
    assert run.transport == "ws" and run.api_key_id == api_key[0].pk


async def test_websocket_handler_bad_input_and_rate_limit(api_key, monkeypatch):
    consumer = FakeConsumer(api_key[0])
    await process_over_websocket(consumer, {"type": "process", "message": "hi"})
    assert consumer.sent == [
        {
            "type": "error",
            "status": 400,
            "code": "required",
            "message": "'message_id' is required.",
            "field": "message_id",
        }
    ]
    key = api_key[0]
    key.requests_per_minute = 1
    await key.asave()
    from accounts import ratelimit

    monkeypatch.setattr(ratelimit, "_now", lambda: 6_000_000 * 60 + 1.0)
    await sync_to_async(ratelimit.rate_limit_reset)(api_key_id=key.pk)
    consumer = FakeConsumer(key)
    await process_over_websocket(consumer, {"type": "process"})
    await process_over_websocket(consumer, {"type": "process"})
    assert consumer.sent[0]["code"] == "required"
    assert consumer.sent[1]["code"] == "rate_limited" and consumer.sent[1]["status"] == 429


class ProcessConsumer(AsyncJsonWebsocketConsumer):
    """What routing/consumers.py does for "process": run the handler in a task, cancel it."""

    async def connect(self):
        self.task = None
        await self.accept()

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "process":
            self.task = asyncio.create_task(process_over_websocket(self, content))
        elif content.get("type") == "cancel" and self.task:
            self.task.cancel()

    async def disconnect(self, code):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def test_over_a_real_websocket_cancel_stops_the_run(api_key):
    pipe = await sync_to_async(pipeline)(
        agents={"fast": {"response": "x"}, "stuck": {"stall_after": 0}}
    )
    communicator = WebsocketCommunicator(ProcessConsumer.as_asgi(), "/ws/generate/")
    communicator.scope["api_key"] = api_key[0]
    connected, _ = await communicator.connect()
    assert connected
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
