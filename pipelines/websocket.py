"""WebSocket transport for fan-out: `{"type": "process", ...}` in, the run's events out.

Registered as the background "process" handler of routing/consumers.py (PipelinesConfig
.ready): the consumer authenticates and rate-limits the message, runs the handler as the
socket's job and cancels it on `{"type": "cancel"}` or disconnect; cancellation closes
the event stream, which cancels the agents and the aggregator (rows cancelled).
"""

from contextlib import aclosing
from typing import Any

from channels.db import database_sync_to_async

from pipelines.serializers import ProcessRequestSerializer
from pipelines.services import ProcessRequest, process_events, process_start
from routing.services.generation import StreamEvent
from tokenflow_site.api import validate
from tokenflow_site.errors import ApiError

# Stream event type -> WebSocket message type (the ws/generate/ contract names).
WS_TYPES = {"text": "token", "end": "end", "error": "error", "metadata": "metadata"}


def ws_message(event: StreamEvent) -> dict[str, Any]:
    """`{"type": <name>, ...data}`; agent_delta / agent_done / agent_failed / info keep
    their names."""
    return {**event.data, "type": WS_TYPES.get(event.type, event.type)}


async def process_over_websocket(consumer, content: dict[str, Any]) -> None:
    """Run one fan-out request for a WebSocket client; errors become `error` messages."""
    try:
        # The same serializer as POST /api/process; "type" is not one of its fields.
        request = ProcessRequest(**validate(ProcessRequestSerializer, content))
        start = await database_sync_to_async(process_start)(
            request=request, api_key=consumer.api_key, transport="ws"
        )
    except ApiError as exc:
        error = exc.payload()["error"]
        if exc.retry_after is not None:
            error["retry_after"] = exc.retry_after
        await consumer.send_json({"type": "error", "status": exc.status, **error})
        return
    async with aclosing(process_events(start, agent_deltas=request.stream_agents)) as events:
        async for event in events:
            await consumer.send_json(ws_message(event))
