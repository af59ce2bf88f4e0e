"""Fuzz both WebSocket consumers (ws/generate/ and ws/batches/<id>/) with a fixed seed.

Frames: random JSON, every field of every message type with every wrong type, huge frames,
binary frames, non-UTF-8 bytes, deeply nested JSON, NaN/Infinity literals, lone surrogates.
Expected for each frame: the socket answers with well-formed messages (an `error` has a
code, a message and a status) or closes cleanly, and afterwards a `ping` still gets a
`pong` (a clean close is followed by a fresh socket). Whatever happens, the application
never raises (WebsocketCommunicator re-raises the consumer's exceptions) and nothing logs
a traceback (asyncio's "Task exception was never retrieved" included).
"""

import json
import logging
import random
import time
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import ApiKey
from tests.batches.helpers import make_job
from tests.factories import mock_model
from tests.pipelines.factories import pipeline
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

SEED = 1010
RANDOM_CASES = 400  # random frames per socket, after the systematic ones
BUDGET_SECONDS = 6.0  # per socket; the systematic cases always run in full
TIMEOUT = 10
# Message types and the fields each one reads (the fuzzer also sends unknown ones).
FIELDS: dict[str, list[str]] = {
    "generate": [
        "model",
        "prompt",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "seed",
        "compress",
        "id",
    ],
    "process": ["message", "message_id", "pipeline", "conversation_id", "id"],
    "cancel": ["id"],
    "auth": ["api_key"],
    "ping": ["id"],
    "refresh": [],
}
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    10**40,
    -(10**40),
    1.5,
    1e308,
    "",
    " ",
    "x" * 5000,
    "\ud800",
    "nul\x00byte",
    [],
    [1, "a", None],
    {},
    {"a": {"b": [1]}},
    [{"role": "user"}],
    [{"role": 1, "content": ["x"]}],
]
# Raw frames that json.dumps cannot produce.
RAW_TEXT = [
    "",
    " ",
    "{",
    "null",
    "[]",
    '"ping"',
    "1e999999",
    "NaN",
    "Infinity",
    "-Infinity",
    '{"type": "ping", "id": NaN}',
    '{"type": "generate", "model": "MODEL", "prompt": "hi", "temperature": NaN}',
    '{"type": "generate", "model": "MODEL", "prompt": "hi", "top_p": Infinity}',
    '{"type": "generate", "model": "MODEL", "prompt": "hi", "max_tokens": -Infinity}',
    '{"type": "generate", "model": "MODEL", "prompt": "hi", "temperature": 1e999}',
    '{"type": "ping", "id": 1' + "0" * 5000 + "}",
    '{"type": "ping", "type": "generate"}',
    '{"type": "auth", "api_key": "\\ud800"}',
    '{"type": "generate", "model": "MODEL", "prompt": "\\udfff"}',
    '{"type": "process", "message": "\\ud800", "message_id": "\\ud800"}',
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    '{"type": "generate", "model": "MODEL", "prompt": ' + "[" * 5_000 + "]" * 5_000 + "}",
    '{"type": "ping", "id": ' + "[" * 900 + "]" * 900 + "}",
    '{"type": "generate", "model": "MODEL", "prompt": "' + "a" * (2 * 1024 * 1024) + '"}',
    '{"type": "ping", "pad": "' + "\u00e9" * (1024 * 1024 + 10) + '"}',
]
RAW_BYTES = [
    b"",
    b"\xff\xfe\x00\x00garbage",
    b"\x80\x81\x82",
    b'{"type": "ping"\xff}',
    '{"type": "ping"}'.encode("utf-16"),
    b'{"type": "ping"}',
    b"\x00" * 64,
    b"[" * 100_000,
    b'{"type": "ping", "pad": "' + b"b" * (2 * 1024 * 1024) + b'"}',
]
OK_TYPES = {
    "generate": {
        *("pong", "error", "authenticated", "metadata", "token", "info", "end"),
        *("agent_done", "agent_failed"),  # process
    },
    "batches": {"pong", "error", "progress"},
}


def random_text(rng: random.Random) -> str:
    """Mostly storable text; sometimes a NUL or a lone surrogate (the socket refuses those
    before any handler, so they must stay rare to let frames reach the handlers)."""
    alphabet = ["a", "b", " ", "\n", '"', "\\", "\u00e9", "\u4e2d", "\U0001f600", "\u200b"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    if rng.random() < 0.03:
        text += rng.choice(["\x00", "\ud800", "\udfff"])
    return text


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.5, 2.5, -1e-300, 1e300, rng.uniform(-10, 10)])
    if kind in (4, 5):
        return random_text(rng)
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def systematic_frames(model: str) -> list[dict[str, Any]]:
    """Every field of every message type, set to every wrong value (the rest valid)."""
    base = {
        "generate": {"type": "generate", "model": model, "prompt": "hi"},
        "process": {"type": "process", "message": "hi", "message_id": "m-1"},
    }
    frames: list[dict[str, Any]] = []
    for kind, fields in FIELDS.items():
        for field in fields:
            for value in WRONG_VALUES:
                frames.append({**base.get(kind, {"type": kind}), field: value})
    frames += [{"type": value} for value in WRONG_VALUES]
    frames += [{}, {"id": 1}, {"type": "PING"}, {"type": "generate"}, {"type": "process"}]
    return frames


def random_frame(rng: random.Random, model: str) -> tuple[str, Any]:
    """("json", object) or ("text", str) or ("bytes", bytes)."""
    roll = rng.random()
    if roll < 0.1:
        return "json", random_json(rng)
    if roll < 0.15:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        return "bytes", raw
    if roll < 0.2:
        text = json.dumps({"type": rng.choice(list(FIELDS)), "v": random_json(rng)})
        return "text", text[: rng.randint(0, len(text))]  # truncated
    kind = rng.choice([*FIELDS, "dance", ""])
    message: dict[str, Any] = {"type": kind}
    for field in FIELDS.get(kind, []):
        if rng.random() < 0.6:
            message[field] = random_json(rng)
    if kind == "generate" and rng.random() < 0.5:
        message["model"] = model
    for _ in range(rng.randint(0, 2)):
        message[random_text(rng)] = random_json(rng)
    return "json", message


async def send_frame(communicator: WebsocketCommunicator, how: str, payload: Any) -> None:
    """The raw ASGI frame (send_to refuses empty ones)."""
    if how == "json":
        frame = {"text": json.dumps(payload)}
    elif how == "text":
        frame = {"text": payload}
    else:
        frame = {"bytes": payload}
    await communicator.send_input({"type": "websocket.receive", **frame})


class Probe:
    """One socket under fuzz: sends a frame, checks every answer, proves it still works."""

    def __init__(self, kind: str, path: str, headers: list[tuple[bytes, bytes]]):
        self.kind, self.path, self.headers = kind, path, headers
        self.communicator: WebsocketCommunicator | None = None
        self.errors: dict[str, int] = {}
        self.closes: list[int] = []
        self.pings = 0

    async def open(self) -> None:
        self.communicator = WebsocketCommunicator(application, self.path, headers=self.headers)
        connected, code = await self.communicator.connect(timeout=TIMEOUT)
        assert connected, code
        if self.kind == "batches":  # the first progress message
            assert (await self.communicator.receive_json_from(timeout=TIMEOUT))["type"] == (
                "progress"
            )

    async def close(self) -> None:
        communicator, self.communicator = self.communicator, None
        if communicator is not None:
            await communicator.disconnect(timeout=TIMEOUT)

    async def send(self, how: str, payload: Any) -> None:
        await send_frame(self.communicator, how, payload)

    async def check(self, how: str, payload: Any) -> None:
        """Send the frame, then a ping; every message until the pong must be well formed.
        A clean close (a 4xxx code or 1000/1009) ends the socket: open a fresh one."""
        await self.send(how, payload)
        self.pings += 1
        probe_id = f"probe-{self.pings}"
        await self.communicator.send_json_to({"type": "ping", "id": probe_id})
        while True:
            output = await self.communicator.receive_output(timeout=TIMEOUT)
            if output["type"] == "websocket.close":
                code = output.get("code", 1000)
                assert code in (1000, 1009) or 4000 <= code < 5000, (code, payload)
                self.closes.append(code)
                await self.close()
                await self.open()
                return
            assert output["type"] == "websocket.send", output
            message = json.loads(output["text"])  # strict clients must parse every answer
            assert isinstance(message, dict), message
            assert message.get("type") in OK_TYPES[self.kind], (message, str(payload)[:200])
            if message["type"] == "error":
                assert isinstance(message["code"], str) and isinstance(message["message"], str)
                assert isinstance(message["status"], int), message
                self.errors[message["code"]] = self.errors.get(message["code"], 0) + 1
            if message["type"] == "pong" and message.get("id") == probe_id:
                return

    async def run(self, model: str) -> None:
        rng = random.Random(SEED)
        started = time.monotonic()
        frames: list[tuple[str, Any]] = [("json", f) for f in systematic_frames(model)]
        frames += [("text", raw.replace("MODEL", model)) for raw in RAW_TEXT]
        frames += [("bytes", raw) for raw in RAW_BYTES]
        for how, payload in frames:
            await self.check_noting(how, payload)
        for _ in range(RANDOM_CASES):
            if time.monotonic() - started > BUDGET_SECONDS:
                break
            await self.check_noting(*random_frame(rng, model))

    async def check_noting(self, how: str, payload: Any) -> None:
        """`check`, naming the frame (cut to 300 characters) when it fails."""
        try:
            await self.check(how, payload)
        except BaseException as exc:
            exc.add_note(f"frame ({how}): {str(payload)[:300]!r}")
            raise


@asynccontextmanager
async def opened(probe: Probe):
    """The probe's socket, always disconnected; a failure inside is not masked by the
    disconnect re-raising the same application error."""
    await probe.open()
    try:
        yield probe
    except BaseException:
        with suppress(BaseException):
            await probe.close()
        raise
    await probe.close()


def assert_no_traceback(caplog) -> None:
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not tracebacks, [caplog.handler.format(r) for r in tracebacks]
    assert "Task exception was never retrieved" not in caplog.text


@pytest.fixture
async def key_and_model(transactional_db, settings):
    """A key, a mock model, and a mock default pipeline: a `process` that passes validation
    runs a real (mock) fan-out instead of loading the local model of the seeded one."""
    key, raw = await sync_to_async(ApiKey.issue)(name="fuzz")
    model = await sync_to_async(mock_model)(response="ok")
    fuzz_pipeline = await sync_to_async(pipeline)(agents={"a": {}, "b": {"response": "b"}})
    settings.TOKENFLOW_DEFAULT_PIPELINE = fuzz_pipeline.name
    return key, raw, model


async def test_fuzz_generate_socket(key_and_model, caplog, settings):
    caplog.set_level(logging.WARNING)
    _key, raw, model = key_and_model
    probe = Probe("generate", "/ws/generate/", [(b"authorization", f"Bearer {raw}".encode())])
    async with opened(probe):
        await probe.run(model.name)
    # The fuzzer reached the validation of every message type, not only the JSON decoder.
    for code in ("invalid_json", "invalid_type", "unknown_type", "message_too_large"):
        assert probe.errors.get(code), (code, probe.errors)
    assert_no_traceback(caplog)


async def test_fuzz_unauthenticated_generate_socket(transactional_db, caplog, settings):
    """Before auth: only auth and ping are served, and auth survives any api_key value."""
    settings.TOKENFLOW_WS_AUTH_GRACE = 60
    caplog.set_level(logging.WARNING)
    model = await sync_to_async(mock_model)(response="ok")
    probe = Probe("generate", "/ws/generate/", [])
    async with opened(probe):
        await probe.run(model.name)
    assert probe.errors.get("unauthorized") and not probe.closes
    assert_no_traceback(caplog)


async def test_fuzz_batch_progress_socket(key_and_model, caplog, settings):
    settings.TOKENFLOW_BATCH_WS_POLL_SECONDS = 60
    caplog.set_level(logging.WARNING)
    key, raw, model = key_and_model
    job = await sync_to_async(make_job)(model.name, n=2, api_key=key)
    probe = Probe(
        "batches", f"/ws/batches/{job.pk}/", [(b"authorization", f"Bearer {raw}".encode())]
    )
    async with opened(probe):
        await probe.run(model.name)
        # Still the live progress socket it was.
        await probe.communicator.send_json_to({"type": "refresh"})
        progress = await probe.communicator.receive_json_from(timeout=TIMEOUT)
        assert progress["type"] == "progress" and progress["total"] == 2
    assert probe.errors.get("invalid_json") and probe.errors.get("unknown_type")
    assert_no_traceback(caplog)


async def test_fuzz_concurrent_frames_do_not_interfere(key_and_model, caplog):
    """Frames sent back to back without waiting (a job running while junk arrives)."""
    caplog.set_level(logging.WARNING)
    _key, raw, model = key_and_model
    communicator = WebsocketCommunicator(application, f"/ws/generate/?api_key={raw}", headers=[])
    assert (await communicator.connect(timeout=TIMEOUT))[0]
    try:
        rng = random.Random(SEED + 1)
        for _ in range(40):
            await send_frame(communicator, *random_frame(rng, model.name))
        await communicator.send_json_to({"type": "ping", "id": "last"})
        while True:
            message = await communicator.receive_json_from(timeout=TIMEOUT)
            if message["type"] == "pong" and message.get("id") == "last":
                break
    finally:
        await communicator.disconnect(timeout=TIMEOUT)
    assert_no_traceback(caplog)
