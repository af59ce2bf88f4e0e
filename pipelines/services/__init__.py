"""Fan-out: run a pipeline's agents concurrently, then stream the aggregator's answer.

`process_start` (sync, `start.py`) resolves the pipeline, applies message_id idempotency
and persists the run with one queued Generation per agent; `process_events` (async,
`execute.py`) yields the StreamEvents every transport renders: `metadata`, `agent_done` /
`agent_failed` as agents finish, the aggregator's `text` (and `info`), then `end` (or
`error`); a finished run with the same message_id is replayed instead. Each agent and the
aggregator is a normal Generation run by `generation_run`.
"""

from pipelines.services.execute import aggregator_messages, process_events
from pipelines.services.start import ProcessRequest, ProcessStart, process_start

__all__ = [
    "ProcessRequest",
    "ProcessStart",
    "aggregator_messages",
    "process_events",
    "process_start",
]
