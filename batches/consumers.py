"""ws/batches/<id>/: live progress of a job (worker pushes, plus a slow DB poll fallback)."""

import asyncio
import contextlib

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.permissions import Principal, owned_by
from accounts.websocket import ResilientLayerMixin, SocketPrincipalMixin
from batches.models import BatchJob
from batches.selectors import batch_progress


@database_sync_to_async
def _progress_for(principal: Principal, job_id: int) -> dict | None:
    """The job's progress if the principal may see it (its key's job, or staff)."""
    job = owned_by(BatchJob.objects.all(), principal).filter(pk=job_id).first()
    return None if job is None else batch_progress(job=job)


class BatchProgressConsumer(ResilientLayerMixin, SocketPrincipalMixin, AsyncJsonWebsocketConsumer):
    """Sends {"type": "progress", ...} on connect, on every worker update and on changes
    seen by polling (workers in another process with an in-memory layer cannot push)."""

    async def connect(self) -> None:
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        self.group = f"batch_{self.job_id}"
        self.poller: asyncio.Task | None = None
        self.last: dict | None = None
        if not await self.principal_connect():
            return
        if self.principal is None:  # this socket takes no auth message: handshake only
            self.principal_disconnect()
            await self.close(code=4401)
            return
        progress = await _progress_for(self.principal, self.job_id)
        if progress is None:
            await self.close(code=4404)
            return
        await self.group_join(self.group)
        await self.accept()
        await self._send(progress)
        self.poller = asyncio.create_task(self._poll())

    async def disconnect(self, code: int) -> None:
        self.principal_disconnect()
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        await self.group_leave(self.group)

    async def batch_progress(self, event: dict) -> None:
        await self._send(event["progress"])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        """{"type": "refresh"} resends the progress now, {"type": "ping"} gets a pong;
        anything else is an error message (the socket stays open)."""
        message = await self.decode_message(text_data, bytes_data, types=("refresh", "ping"))
        if message is None:
            return
        if message["type"] == "ping":
            await self.send_pong(message)
            return
        await self._send(await _progress_for(self.principal, self.job_id), force=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(settings.TOKENFLOW_BATCH_WS_POLL_SECONDS)
            if not await self.principal_check():  # revoked: closed
                return
            progress = await _progress_for(self.principal, self.job_id)
            if progress is not None:
                await self._send(progress)

    async def _send(self, progress: dict | None, *, force: bool = False) -> None:
        if progress is None or (progress == self.last and not force):
            return
        self.last = progress
        await self.send_json({"type": "progress", **progress})
