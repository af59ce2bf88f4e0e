"""ws/generate/ with the mock provider: events, cancel, disconnect, auth, bad messages."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import ApiKey
from routing.models import Generation
from tests.factories import mock_model
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10
ORIGIN = (b"origin", b"http://testserver")  # AllowedHostsOriginValidator wants an Origin


def ws(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=[ORIGIN, *headers])


@pytest.fixture
async def key(transactional_db):
    _row, raw = await sync_to_async(ApiKey.issue)(name="ws")
    return raw


@pytest.fixture
async def socket(key):
    communicator = ws("/ws/generate/", (b"authorization", f"Bearer {key}".encode()))
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    yield communicator
    await communicator.disconnect(timeout=TIMEOUT)


async def receive_until(communicator, kind: str) -> list[dict]:
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        messages.append(message)
        if message["type"] in (kind, "error"):
            return messages


async def test_generate_events_and_row(socket):
    model = await sync_to_async(mock_model)(response="alpha beta")
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x", "id": 7})
    messages = await receive_until(socket, "end")
    assert [m["type"] for m in messages] == ["metadata", "token", "token", "end"]
    assert all(m["id"] == 7 for m in messages)
    assert "".join(m["text"] for m in messages if m["type"] == "token") == "alpha beta"
    row = await Generation.objects.aget(pk=messages[0]["generation_id"])
    assert row.status == "completed" and row.transport == "ws" and row.output_text == "alpha beta"


async def test_several_generations_one_after_another(socket):
    model = await sync_to_async(mock_model)()
    for word in ("one", "two", "three"):
        await socket.send_json_to({"type": "generate", "model": model.name, "prompt": word})
        messages = await receive_until(socket, "end")
        assert "".join(m.get("text", "") for m in messages) == f"Echo: {word}"
    assert await Generation.objects.filter(status="completed").acount() == 3


async def test_cancel_stops_generation_and_keeps_partial_text(socket):
    model = await sync_to_async(mock_model)(response="a b c d", token_delay=0.01, stall_after=2)
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
    tokens = []
    while len(tokens) < 2:
        message = await socket.receive_json_from(timeout=TIMEOUT)
        if message["type"] == "token":
            tokens.append(message["text"])
    await socket.send_json_to({"type": "cancel"})
    end = await receive_until(socket, "end")
    assert end[-1]["finish_reason"] == "cancelled"
    row = await Generation.objects.aget(pk=end[-1]["generation_id"])
    assert row.status == "cancelled" and row.output_text == "a b"
    # The socket is still usable.
    await socket.send_json_to({"type": "ping"})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "pong"


async def test_disconnect_cancels_the_running_generation(key):
    model = await sync_to_async(mock_model)(response="a b c", token_delay=0.01, stall_after=1)
    communicator = ws(f"/ws/generate/?api_key={key}")
    await communicator.connect(timeout=TIMEOUT)
    await communicator.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
    await receive_until(communicator, "token")
    await communicator.disconnect(timeout=TIMEOUT)
    row = await Generation.objects.aget()
    assert row.status == "cancelled" and row.output_text == "a"


async def test_invalid_json_keeps_the_socket_open(socket):
    await socket.send_to(text_data="{not json")
    error = await socket.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error" and error["code"] == "invalid_json"
    await socket.send_json_to({"type": "dance"})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["code"] == "unknown_type"
    await socket.send_json_to({"type": "ping"})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "pong"


async def test_bad_generate_input_is_an_error_message(socket):
    await sync_to_async(mock_model)("mock/ws")
    await socket.send_json_to({"type": "generate", "model": "nope", "prompt": "x"})
    error = await socket.receive_json_from(timeout=TIMEOUT)
    assert error["code"] == "model_not_found" and error["available_models"] == ["mock/ws"]
    await socket.send_json_to({"type": "generate", "model": "mock/ws", "temperature": 9})
    error = await socket.receive_json_from(timeout=TIMEOUT)
    assert error["code"] == "out_of_range" and error["field"] == "temperature"
    await socket.send_json_to({"type": "generate", "model": "mock/ws"})
    error = await socket.receive_json_from(timeout=TIMEOUT)
    assert error["code"] == "required" and error["field"] == "prompt"


async def test_mid_stream_fault_is_an_error_event(socket):
    model = await sync_to_async(mock_model)(response="a b c", fail_after=1)
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
    messages = await receive_until(socket, "end")
    assert [m["type"] for m in messages] == ["metadata", "token", "error"]
    row = await Generation.objects.aget(pk=messages[0]["generation_id"])
    assert row.status == "failed" and row.output_text == "a"


async def test_busy_socket_refuses_a_second_generation(socket):
    model = await sync_to_async(mock_model)(response="a b", token_delay=0.01, stall_after=1)
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
    await receive_until(socket, "token")
    await socket.send_json_to({"type": "generate", "model": model.name, "prompt": "y"})
    assert (await socket.receive_json_from(timeout=TIMEOUT))["code"] == "busy"
    await socket.send_json_to({"type": "cancel"})
    await receive_until(socket, "end")


async def test_auth_by_first_message(key):
    model = await sync_to_async(mock_model)(response="hi")
    communicator = ws("/ws/generate/")
    await communicator.connect(timeout=TIMEOUT)
    try:
        await communicator.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["code"] == "unauthorized"
        await communicator.send_json_to({"type": "auth", "api_key": "wrong"})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["code"] == "unauthorized"
        await communicator.send_json_to({"type": "auth", "api_key": key})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "authenticated"
        await communicator.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
        assert (await receive_until(communicator, "end"))[-1]["type"] == "end"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_invalid_header_key_is_rejected(transactional_db):
    communicator = ws("/ws/generate/", (b"authorization", b"Bearer tf_wrong"))
    await communicator.connect(timeout=TIMEOUT)
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["code"] == "unauthorized"
    assert (await communicator.receive_output(timeout=TIMEOUT))["type"] == "websocket.close"
    await communicator.disconnect(timeout=TIMEOUT)


async def test_concurrent_sockets(key):
    model = await sync_to_async(mock_model)(response="x y z", token_delay=0.005)

    async def one():
        communicator = ws(f"/ws/generate/?api_key={key}")
        await communicator.connect(timeout=TIMEOUT)
        try:
            await communicator.send_json_to(
                {"type": "generate", "model": model.name, "prompt": "p"}
            )
            return await receive_until(communicator, "end")
        finally:
            await communicator.disconnect(timeout=TIMEOUT)

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert all(messages[-1]["type"] == "end" for messages in results)


async def test_background_handlers_are_cancellable_jobs(socket):
    """Another feature's message type registered with background=True (e.g. "process")."""
    from routing.consumers import BACKGROUND_TYPES, MESSAGE_HANDLERS, ws_handler

    stopped = asyncio.Event()

    async def slow(consumer, message):
        try:
            await consumer.send_json({"type": "started", "id": message.get("id")})
            await asyncio.Event().wait()
        finally:
            stopped.set()

    ws_handler("test_slow", background=True)(slow)
    try:
        await socket.send_json_to({"type": "test_slow", "id": 1})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["type"] == "started"
        await socket.send_json_to({"type": "test_slow", "id": 2})
        assert (await socket.receive_json_from(timeout=TIMEOUT))["code"] == "busy"
        await socket.send_json_to({"type": "cancel"})
        await asyncio.wait_for(stopped.wait(), TIMEOUT)
    finally:
        MESSAGE_HANDLERS.pop("test_slow", None)
        BACKGROUND_TYPES.discard("test_slow")
