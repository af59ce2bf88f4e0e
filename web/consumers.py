"""ws/dashboard/: the dashboard's live data, pushed (the page never polls).

Staff sessions only (the Origin-checked cookie session of accounts.websocket). On connect
the socket gets a `live` snapshot (generations in flight, active batch jobs with progress)
and the `stats` aggregates of its range; then:

- every `batch.progress` a batch worker publishes to `batch_<id>` (the consumer joins the
  groups of the active jobs) is forwarded at once as `{"type": "batch", ...progress}`;
- every TOKENFLOW_DASHBOARD_LIVE_SECONDS the consumer reads the in-flight generations and
  active jobs (two indexed queries) and pushes `live` when they changed (a batch worker or
  daphne in another process cannot push through the in-memory layer);
- when generations started or finished since the last `stats`, fresh `stats` follow, at
  most every TOKENFLOW_DASHBOARD_STATS_SECONDS.

Connect with `?range=hour|day|week` (default day).
In: `{"type": "range", "range": "hour"|"day"|"week"}` (stats for that range now).
"""

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Max

from accounts.websocket import ResilientLayerMixin, SocketPrincipalMixin
from routing.models import Generation
from tokenflow_site.api import validate
from tokenflow_site.errors import ApiError
from web import selectors
from web.serializers import DEFAULT_RANGE, RANGES, RangeSerializer


def _live() -> tuple[dict[str, Any], tuple]:
    """The live snapshot and a cheap marker that changes when generations start or end."""
    snapshot = selectors.live_snapshot()
    newest = Generation.objects.aggregate(newest=Max("id"))["newest"]
    marker = (newest, tuple(g["id"] for g in snapshot["generations"]))
    return snapshot, marker


class DashboardConsumer(ResilientLayerMixin, SocketPrincipalMixin, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        query = parse_qs((self.scope.get("query_string") or b"").decode(errors="replace"))
        wanted = (query.get("range") or [DEFAULT_RANGE])[0]
        self.span = wanted if wanted in RANGES else DEFAULT_RANGE
        self.groups_joined: set[str] = set()
        self.loop_task: asyncio.Task | None = None
        if not await self.principal_connect():
            return
        if self.principal is None or not self.principal.is_staff:
            # The dashboard is a staff page: no API keys, no auth-by-message.
            self.principal_disconnect()
            await self.accept()
            await self.send_error("Staff session required.", code="forbidden", status=403)
            await self.close(code=4403)
            return
        await self.accept()
        self.marker: tuple | None = None
        self.stats_sent_at = 0.0
        self.loop_task = asyncio.create_task(self._loop())

    async def disconnect(self, code: int) -> None:
        self.principal_disconnect()
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        for group in self.groups_joined:
            await self.group_leave(group)

    @classmethod
    async def encode_json(cls, content) -> str:
        return json.dumps(content, cls=DjangoJSONEncoder)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "range":
            await self.send_error('Expected {"type": "range", "range": ...}.', code="unknown_type")
            return
        try:
            self.span = validate(RangeSerializer, {"range": content.get("range")})["range"]
        except ApiError as exc:
            await self.send_error(exc.message, code=exc.code, status=exc.status, field="range")
            return
        await self._send_stats()

    async def batch_progress(self, event: dict) -> None:
        """A worker's progress message for a job this socket follows."""
        await self.send_json({"type": "batch", **event["progress"]})

    async def _send_stats(self) -> None:
        stats = await database_sync_to_async(selectors.dashboard_stats)(span=self.span)
        self.stats_sent_at = time.monotonic()
        await self.send_json({"type": "stats", **stats})

    async def _follow(self, batches: list[dict[str, Any]]) -> None:
        wanted = {f"batch_{job['job_id']}" for job in batches}
        for group in wanted - self.groups_joined:
            await self.group_join(group)
        for group in self.groups_joined - wanted:
            await self.group_leave(group)
        self.groups_joined = wanted

    async def _loop(self) -> None:
        last_snapshot: dict | None = None
        stats_due = True
        while True:
            if not await self.principal_check():  # deactivated staff user: closed
                return
            snapshot, marker = await database_sync_to_async(_live)()
            await self._follow(snapshot["batches"])
            if snapshot != last_snapshot:
                last_snapshot = snapshot
                await self.send_json({"type": "live", **snapshot})
            if marker != self.marker:
                self.marker = marker
                stats_due = True
            wait = settings.TOKENFLOW_DASHBOARD_STATS_SECONDS
            if stats_due and time.monotonic() - self.stats_sent_at >= wait:
                stats_due = False
                await self._send_stats()
            await asyncio.sleep(settings.TOKENFLOW_DASHBOARD_LIVE_SECONDS)
