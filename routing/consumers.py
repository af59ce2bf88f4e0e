"""ws/generate/: generations over a WebSocket, consuming the one generation event stream.

In:  {"type": "auth", "api_key": "..."}   (unless the header, ?api_key= or a session did it)
     {"type": "generate", "model": ..., "prompt"|"messages": ..., "temperature": ..., "id"?: ...}
     {"type": "cancel"}                    stops the running generation
Out: {"type": "metadata"|"token"|"info"|"end"|"error", ...}; a client "id" is echoed back.

Message types are dispatched through MESSAGE_HANDLERS; another feature adds its own with
`ws_handler("process", background=True)(handler)` where `async def handler(consumer, message)`
(see docs/streaming.md).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.ratelimit import rate_limit_hit
from accounts.websocket import SocketPrincipalMixin
from routing.models import Prompt
from routing.serializers import GenerateRequestSerializer
from routing.services.generation import PreparedGeneration, generation_acreate
from tokenflow_site.api import validate
from tokenflow_site.errors import ApiError

logger = logging.getLogger(__name__)

Handler = Callable[["GenerateConsumer", dict[str, Any]], Awaitable[None]]
MESSAGE_HANDLERS: dict[str, Handler] = {}
# Handlers that run as the socket's one cancellable job (a task; "cancel"/disconnect stop it).
BACKGROUND_TYPES: set[str] = set()
# Messages accepted before authentication.
PUBLIC_TYPES = {"auth", "ping"}


def ws_handler(message_type: str, *, background: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler(consumer, message)` for {"type": message_type}. With
    `background=True` it runs as the socket's job: refused with `busy` while another job
    runs, cancelled by {"type": "cancel"} or a disconnect."""

    def register(handler: Handler) -> Handler:
        MESSAGE_HANDLERS[message_type] = handler
        if background:
            BACKGROUND_TYPES.add(message_type)
        return handler

    return register


class GenerateConsumer(SocketPrincipalMixin, AsyncJsonWebsocketConsumer):
    """One socket, one running job at a time (`self.task`), many jobs one after another.
    Auth and authorization come from `SocketPrincipalMixin` (the one permission layer)."""

    # No channel layer: nothing is sent to this socket from outside, and a layer would cost a
    # Redis subscription per socket. A feature that needs groups sets "default" here.
    channel_layer_alias = None

    async def connect(self) -> None:
        self.task: asyncio.Task | None = None
        self.job_id: Any = None
        if await self.principal_connect():
            await self.accept()

    @property
    def api_key(self):
        return self.principal.api_key if self.principal is not None else None

    async def disconnect(self, code: int) -> None:
        self.principal_disconnect()
        await self.stop_task()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        message = await self.decode_message(text_data, bytes_data, types=MESSAGE_HANDLERS)
        if message is None:
            return
        kind = message["type"]
        handler = MESSAGE_HANDLERS[kind]
        if self.principal is None and kind not in PUBLIC_TYPES:
            await self.send_error(
                'Authenticate first: {"type": "auth", "api_key": "..."}.',
                code="unauthorized",
                status=401,
            )
            return
        if kind in BACKGROUND_TYPES:
            if self.busy():
                await self.send_busy(message.get("id"))
                return
            if not await self.principal_check() or await self.rate_limited(message.get("id")):
                return
            await self.start_task(handler(self, message), job_id=message.get("id"))
            return
        await handler(self, message)

    async def send_busy(self, job_id: Any = None) -> None:
        await self.send_error(
            "A job is already running on this socket; cancel it or wait for its end.",
            code="busy",
            status=409,
            id=job_id,
        )

    async def rate_limited(self, job_id: Any = None) -> bool:
        """Count a job against the key's per-minute limits; tell the client when over."""
        if self.api_key is None:
            return False
        decision = await database_sync_to_async(rate_limit_hit)(api_key=self.api_key)
        if decision is None or decision.allowed:
            return False
        await self.send_error(
            decision.message(),
            code="rate_limited",
            status=429,
            retry_after=decision.retry_after,
            id=job_id,
        )
        return True

    async def start_task(self, coroutine: Awaitable[None], *, job_id: Any = None) -> None:
        self.job_id = job_id
        self.task = asyncio.create_task(coroutine)

    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop_task(self) -> bool:
        """Cancel the running job and wait until it has persisted its state."""
        task, self.task = self.task, None
        if task is None or task.done():
            return False
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return True


@ws_handler("ping")
async def on_ping(consumer: GenerateConsumer, message: dict[str, Any]) -> None:
    await consumer.send_pong(message)


@ws_handler("auth")
async def on_auth(consumer: GenerateConsumer, message: dict[str, Any]) -> None:
    try:
        principal = await consumer.principal_set(message.get("api_key"))
    except ApiError as exc:
        await consumer.send_error(exc.message, code=exc.code, status=exc.status)
        return
    await consumer.send_json({"type": "authenticated", "api_key": principal.api_key.prefix})


EVENT_TYPES = {"metadata": "metadata", "text": "token", "info": "info", "end": "end"}


async def _stream(consumer: GenerateConsumer, prepared: PreparedGeneration, job_id: Any) -> None:
    tag = {"id": job_id} if job_id is not None else {}
    generation = prepared.generation
    try:
        async with aclosing(prepared.events()) as events:
            async for event in events:
                if event.type == "error":
                    await consumer.send_json({"type": "error", **event.data, **tag})
                else:
                    await consumer.send_json(
                        {"type": EVENT_TYPES.get(event.type, event.type), **event.data, **tag}
                    )
    except asyncio.CancelledError:
        # The row is already persisted as cancelled (generation_run); tell the client.
        with suppress(Exception):
            await consumer.send_json(
                {
                    "type": "end",
                    "generation_id": generation.pk,
                    "finish_reason": "cancelled",
                    **tag,
                }
            )
        raise


@ws_handler("generate")
async def on_generate(consumer: GenerateConsumer, message: dict[str, Any]) -> None:
    job_id = message.get("id")
    if consumer.busy():
        await consumer.send_busy(job_id)
        return
    if not await consumer.principal_check() or await consumer.rate_limited(job_id):
        return
    data = {k: v for k, v in message.items() if k not in ("type", "id")}
    try:
        prepared = await generation_acreate(
            request=validate(GenerateRequestSerializer, data),
            api_key=consumer.api_key,
            transport="ws",
            source=Prompt.Source.WEBSOCKET,
        )
    except ApiError as exc:
        await consumer.send_error(
            exc.message,
            code=exc.code,
            status=exc.status,
            field=exc.field,
            retry_after=exc.retry_after,
            id=job_id,
            **exc.extra,
        )
        return
    await consumer.start_task(_stream(consumer, prepared, job_id), job_id=job_id)


@ws_handler("cancel")
async def on_cancel(consumer: GenerateConsumer, message: dict[str, Any]) -> None:
    if not await consumer.stop_task():
        await consumer.send_error("Nothing to cancel.", code="not_running", status=409)
