"""WebSocket authorization (issue 10's rules), on both sockets, through the real ASGI stack.

- API-key clients connect without an Origin (Authorization, X-API-Key, api-key, ?api_key=).
- Cookie sessions: staff only, and only from an allowed Origin; others 4403.
- No credentials: `auth` message within TOKENFLOW_WS_AUTH_GRACE, else 4401.
- Revocation stops an open socket before its next job (4401).
- A key sees only its own batch's progress (4404 otherwise, like a missing job).
"""

import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from accounts.models import ApiKey
from batches.models import BatchJob
from tests.batches.helpers import make_job
from tests.factories import mock_model
from tokenflow_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10
ALLOWED_ORIGIN = (b"origin", b"http://testserver")
FOREIGN_ORIGIN = (b"origin", b"https://evil.example")


def ws(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=list(headers))


async def connect(communicator: WebsocketCommunicator) -> tuple[bool, int | None]:
    return await communicator.connect(timeout=TIMEOUT)


async def receive_until(communicator, kind: str) -> list[dict]:
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        messages.append(message)
        if message["type"] in (kind, "error"):
            return messages


async def generate(communicator, model_name: str) -> list[dict]:
    await communicator.send_json_to({"type": "generate", "model": model_name, "prompt": "hi"})
    return await receive_until(communicator, "end")


async def refused(communicator) -> tuple[dict, dict]:
    """(the error message, the close) of a socket refused after its accept."""
    error = await communicator.receive_json_from(timeout=TIMEOUT)
    close = await communicator.receive_output(timeout=TIMEOUT)
    assert error["type"] == "error" and close["type"] == "websocket.close"
    return error, close


@pytest.fixture
async def key(transactional_db) -> tuple[ApiKey, str]:
    return await sync_to_async(ApiKey.issue)(name="ws-auth")


@pytest.fixture
async def model(transactional_db):
    return await sync_to_async(mock_model)(response="streamed fine")


def _session_cookie(*, is_staff: bool, is_active: bool = True, username: str = "u") -> bytes:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username, password="pw", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    if not is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    return "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items()).encode()


async def session_cookie(**kwargs) -> tuple[bytes, bytes]:
    return (b"cookie", await sync_to_async(_session_cookie)(**kwargs))


# --- API keys: no Origin needed ------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["authorization", "x-api-key", "api-key", "query"], ids=lambda w: w
)
async def test_api_key_client_without_origin_connects_and_streams(key, model, where):
    _row, raw = key
    headers = {
        "authorization": [(b"authorization", f"Bearer {raw}".encode())],
        "x-api-key": [(b"x-api-key", raw.encode())],
        "api-key": [(b"api-key", raw.encode())],
        "query": [],
    }[where]
    path = f"/ws/generate/?api_key={raw}" if where == "query" else "/ws/generate/"
    communicator = ws(path, *headers)  # no Origin header, like Python's `websockets`
    try:
        connected, _ = await connect(communicator)
        assert connected
        messages = await generate(communicator, model.name)
        assert messages[-1]["type"] == "end"
        assert "".join(m.get("text", "") for m in messages) == "streamed fine"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_api_key_client_with_a_foreign_origin_still_connects(key, model):
    """The Origin check protects cookies; a key is not a cookie a page can ride."""
    communicator = ws("/ws/generate/", (b"x-api-key", key[1].encode()), FOREIGN_ORIGIN)
    try:
        assert (await connect(communicator))[0]
        assert (await generate(communicator, model.name))[-1]["type"] == "end"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_invalid_key_in_a_header_is_refused_with_4401(transactional_db):
    communicator = ws("/ws/generate/", (b"authorization", b"Bearer tf_not_a_key"))
    try:
        await connect(communicator)
        error, close = await refused(communicator)
        assert error["code"] == "unauthorized" and close["code"] == 4401
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_key_of_an_inactive_user_is_refused_with_4403(transactional_db):
    def issue():
        from django.contrib.auth import get_user_model

        owner = get_user_model().objects.create_user("gone", is_active=False)
        return ApiKey.issue(name="inactive owner", user=owner)[1]

    raw = await sync_to_async(issue)()
    communicator = ws("/ws/generate/", (b"authorization", f"Bearer {raw}".encode()))
    try:
        await connect(communicator)
        error, close = await refused(communicator)
        assert error["code"] == "forbidden" and close["code"] == 4403
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


# --- cookie sessions: staff only, allowed Origin only --------------------------------------


async def test_staff_session_with_a_foreign_origin_is_refused_at_the_handshake(model):
    communicator = ws("/ws/generate/", await session_cookie(is_staff=True), FOREIGN_ORIGIN)
    try:
        connected, _code = await connect(communicator)
        assert not connected  # closed before any accept
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_staff_session_without_an_origin_is_refused(model):
    communicator = ws("/ws/generate/", await session_cookie(is_staff=True))
    try:
        assert not (await connect(communicator))[0]
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_staff_session_with_an_allowed_origin_streams(model):
    communicator = ws("/ws/generate/", await session_cookie(is_staff=True), ALLOWED_ORIGIN)
    try:
        assert (await connect(communicator))[0]
        assert (await generate(communicator, model.name))[-1]["type"] == "end"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_non_staff_session_is_refused_with_4403(model):
    communicator = ws("/ws/generate/", await session_cookie(is_staff=False), ALLOWED_ORIGIN)
    try:
        await connect(communicator)
        error, close = await refused(communicator)
        assert error["code"] == "forbidden" and error["status"] == 403
        assert close["code"] == 4403
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_session_of_a_deactivated_user_is_refused_with_4403(model):
    """Like HTTP: a cookie naming a user who can no longer log in is a 403, not anonymous."""
    cookie = await session_cookie(is_staff=True, is_active=False)
    communicator = ws("/ws/generate/", cookie, ALLOWED_ORIGIN)
    try:
        await connect(communicator)
        error, close = await refused(communicator)
        assert error["code"] == "forbidden" and close["code"] == 4403
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


# --- no credentials: the grace period -------------------------------------------------------


async def test_unauthenticated_socket_is_closed_after_the_grace_period(settings, transactional_db):
    settings.TOKENFLOW_WS_AUTH_GRACE = 0.2
    communicator = ws("/ws/generate/")
    try:
        started = time.monotonic()
        assert (await connect(communicator))[0]
        await communicator.send_json_to({"type": "ping", "id": 1})  # served before auth
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "pong"
        error, close = await refused(communicator)
        assert time.monotonic() - started >= 0.2
        assert error["code"] == "unauthorized" and close["code"] == 4401
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_auth_message_within_the_grace_period_keeps_the_socket(settings, key, model):
    settings.TOKENFLOW_WS_AUTH_GRACE = 0.2
    communicator = ws("/ws/generate/")
    try:
        assert (await connect(communicator))[0]
        await communicator.send_json_to({"type": "auth", "api_key": key[1]})
        authenticated = await communicator.receive_json_from(timeout=TIMEOUT)
        assert authenticated == {"type": "authenticated", "api_key": key[0].prefix}
        assert await communicator.receive_nothing(timeout=0.5)  # well past the grace
        assert (await generate(communicator, model.name))[-1]["type"] == "end"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_auth_message_with_a_bad_key_keeps_the_grace_running(settings, transactional_db):
    settings.TOKENFLOW_WS_AUTH_GRACE = 0.3
    communicator = ws("/ws/generate/")
    try:
        assert (await connect(communicator))[0]
        await communicator.send_json_to({"type": "auth", "api_key": "tf_wrong"})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["code"] == "unauthorized"
        error, close = await refused(communicator)  # then the grace period ends it
        assert close["code"] == 4401
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


# --- revocation on an open socket ------------------------------------------------------------


async def test_revoked_key_stops_before_its_next_job(key, model):
    row, raw = key
    communicator = ws("/ws/generate/", (b"authorization", f"Bearer {raw}".encode()))
    try:
        assert (await connect(communicator))[0]
        assert (await generate(communicator, model.name))[-1]["type"] == "end"
        await sync_to_async(row.revoke)()
        await communicator.send_json_to({"type": "generate", "model": model.name, "prompt": "x"})
        error, close = await refused(communicator)
        assert error["code"] == "unauthorized" and close["code"] == 4401
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_revoked_key_stops_the_batch_progress_socket(settings, key, model):
    settings.TOKENFLOW_BATCH_WS_POLL_SECONDS = 0.05
    row, raw = key
    job = await sync_to_async(make_job)(model.name, n=1, api_key=row)
    communicator = ws(f"/ws/batches/{job.pk}/", (b"authorization", f"Bearer {raw}".encode()))
    try:
        assert (await connect(communicator))[0]
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "progress"
        await sync_to_async(row.revoke)()
        error, close = await refused(communicator)
        assert error["code"] == "unauthorized" and close["code"] == 4401
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


# --- ownership of batch progress ------------------------------------------------------------


async def test_key_a_cannot_subscribe_to_key_b_batch(key, model):
    _row_a, raw_a = key
    row_b, _raw_b = await sync_to_async(ApiKey.issue)(name="b")
    job = await sync_to_async(make_job)(model.name, n=1, api_key=row_b)
    missing = await sync_to_async(lambda: (BatchJob.objects.order_by("-pk").first().pk) + 1000)()
    for job_id in (job.pk, missing):  # someone else's job looks like a missing one
        communicator = ws(f"/ws/batches/{job_id}/", (b"x-api-key", raw_a.encode()))
        try:
            assert await connect(communicator) == (False, 4404)
        finally:
            await communicator.disconnect(timeout=TIMEOUT)


async def test_owner_key_and_staff_session_may_subscribe(key, model):
    row, raw = key
    job = await sync_to_async(make_job)(model.name, n=3, api_key=row)
    owner = ws(f"/ws/batches/{job.pk}/", (b"authorization", f"Bearer {raw}".encode()))
    staff = ws(f"/ws/batches/{job.pk}/", await session_cookie(is_staff=True), ALLOWED_ORIGIN)
    for communicator in (owner, staff):
        try:
            assert (await connect(communicator))[0]
            progress = await communicator.receive_json_from(timeout=TIMEOUT)
            assert progress["type"] == "progress" and progress["total"] == 3
        finally:
            await communicator.disconnect(timeout=TIMEOUT)


async def test_batch_socket_refuses_sessions_from_a_foreign_origin(key, model):
    job = await sync_to_async(make_job)(model.name, n=1, api_key=key[0])
    communicator = ws(f"/ws/batches/{job.pk}/", await session_cookie(is_staff=True), FOREIGN_ORIGIN)
    try:
        assert not (await connect(communicator))[0]
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def test_auth_message_with_a_user_owned_key(settings, model):
    """The key's owner is read in a thread (not on the event loop); inactive owner: 403."""

    def issue(active: bool) -> str:
        from django.contrib.auth import get_user_model

        owner = get_user_model().objects.create_user(f"owner-{active}", is_active=active)
        return ApiKey.issue(name="owned", user=owner)[1]

    good, bad = await sync_to_async(issue)(True), await sync_to_async(issue)(False)
    communicator = ws("/ws/generate/")
    try:
        assert (await connect(communicator))[0]
        await communicator.send_json_to({"type": "auth", "api_key": bad})
        error = await communicator.receive_json_from(timeout=TIMEOUT)
        assert error["code"] == "forbidden" and error["status"] == 403
        await communicator.send_json_to({"type": "auth", "api_key": good})
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "authenticated"
        assert (await generate(communicator, model.name))[-1]["type"] == "end"
    finally:
        await communicator.disconnect(timeout=TIMEOUT)
