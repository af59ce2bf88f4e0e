"""Claiming and writing: the only SQL of the batch worker.

`items_claim` leases up to N items of a job in one statement (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite's IMMEDIATE transactions serialise claimers), honouring the job's and
the API key's caps on leased items. `outcomes_write` applies finished items in bulk: one
`UPDATE ... FROM (rows) ... RETURNING id` and one multi-row attempt `INSERT` per 500 rows,
each row described once by ITEM_COLUMNS / ATTEMPT_COLUMNS. Every write is conditional on
the item's lease token, so a result whose lease was lost is dropped, never duplicated.
`outcomes_write_isolating` keeps one unwritable row (a NUL in PostgreSQL jsonb, a value
JSON cannot encode) from blocking the others: that item fails with `result_unwritable`.
"""

import datetime
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from batches.models import BatchAttempt, BatchItem, BatchJob

logger = logging.getLogger(__name__)

ItemStatus = BatchItem.Status
JobStatus = BatchJob.Status
CHUNK = 500
# Errors that say "the database is unreachable", not "this row is bad": retry the whole
# buffer later instead of isolating rows.
TRANSIENT = (OperationalError, InterfaceError)


class JobNotActive(Exception):
    """Raised by a claim when the job was paused, cancelled or finished meanwhile."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Claimed:
    """An item leased by this worker (under `token`)."""

    id: int
    custom_id: str
    params: dict[str, Any]
    attempts: int
    token: str
    raw: str = ""  # params as stored (JSON text), reused for the attempt's request


@dataclass
class Outcome:
    """A finished attempt (or a released item) waiting to be written."""

    item: Claimed
    status: str
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    model_name: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: Any = None  # this attempt's cost (Decimal), added to the item's
    available_at: Any = None
    finished_at: Any = None
    attempt: dict[str, Any] | None = None  # a BatchAttempt row, None when released


# --- the column spec ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One outcome being written, with its JSON already encoded."""

    outcome: Outcome
    result: str | None  # the encoded result, shared by the item and its attempt
    adapt: Callable[[Any], Any]


@dataclass(frozen=True)
class Column:
    """A column written in bulk: its name, its PostgreSQL array type and its value."""

    name: str
    pg_type: str
    value: Callable[[Row], Any]


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _attempt(row: Row) -> dict[str, Any]:
    return row.outcome.attempt or {}


def _attempt_request(row: Row) -> str | None:
    request = _attempt(row)["request"]
    return row.outcome.item.raw if request is row.outcome.item.params else dumps(request)


def _attempt_result(row: Row) -> str | None:
    result = _attempt(row)["result"]
    return row.result if result is row.outcome.result else dumps(result)


# The item UPDATE: `id` and `lease_token` select the row (the token must still match);
# every other column is set from the outcome.
ITEM_KEYS = ("id", "lease_token")
ITEM_COLUMNS: tuple[Column, ...] = (
    Column("id", "bigint", lambda r: r.outcome.item.id),
    Column("lease_token", "text", lambda r: r.outcome.item.token),
    Column("status", "text", lambda r: r.outcome.status),
    Column("result", "jsonb", lambda r: r.result),
    Column("error", "jsonb", lambda r: dumps(r.outcome.error)),
    Column("error_code", "text", lambda r: (r.outcome.error or {}).get("code", "")),
    Column("attempts", "int", lambda r: r.outcome.attempts),
    Column("params", "jsonb", lambda r: dumps(r.outcome.params)),
    Column("model_name", "text", lambda r: r.outcome.model_name),
    Column("prompt_tokens", "int", lambda r: r.outcome.prompt_tokens),
    Column("completion_tokens", "int", lambda r: r.outcome.completion_tokens),
    Column("latency_ms", "float8", lambda r: r.outcome.latency_ms),
    Column("cost_usd", "numeric", lambda r: r.outcome.cost_usd),
    Column("available_at", "timestamptz", lambda r: r.adapt(r.outcome.available_at)),
    Column("finished_at", "timestamptz", lambda r: r.adapt(r.outcome.finished_at)),
)
# Set on every written item besides ITEM_COLUMNS: the lease is over.
ITEM_RELEASE = "lease_token = '', lease_expires_at = NULL, worker = ''"
# A released item (params None) keeps its params.
ITEM_SET_OVERRIDES = {
    "params": "COALESCE(v.params, {table}.params)",
    # An item's cost is the sum of its attempts'.
    "cost_usd": "CASE WHEN v.cost_usd IS NULL THEN {table}.cost_usd "
    "ELSE COALESCE({table}.cost_usd, 0) + v.cost_usd END",
}

ATTEMPT_COLUMNS: tuple[Column, ...] = (
    Column("item_id", "bigint", lambda r: r.outcome.item.id),
    Column("number", "int", lambda r: _attempt(r)["number"]),
    Column("status", "text", lambda r: _attempt(r)["status"]),
    Column("request", "jsonb", _attempt_request),
    Column("model_name", "text", lambda r: _attempt(r)["model_name"]),
    Column("result", "jsonb", _attempt_result),
    Column("error_code", "text", lambda r: _attempt(r)["error_code"]),
    Column("error_message", "text", lambda r: _attempt(r)["error_message"]),
    Column("status_code", "int", lambda r: _attempt(r)["status_code"]),
    Column("retryable", "bool", lambda r: _attempt(r)["retryable"]),
    Column("latency_ms", "float8", lambda r: _attempt(r)["latency_ms"]),
    Column("prompt_tokens", "int", lambda r: _attempt(r)["prompt_tokens"]),
    Column("completion_tokens", "int", lambda r: _attempt(r)["completion_tokens"]),
    Column("cost_usd", "numeric", lambda r: _attempt(r).get("cost_usd")),
    Column("worker", "text", lambda r: _attempt(r)["worker"]),
    Column("created_at", "timestamptz", lambda r: r.adapt(_attempt(r)["created_at"])),
)


def _values(columns: tuple[Column, ...], rows: list[Row]) -> list[tuple]:
    return [tuple(column.value(row) for column in columns) for row in rows]


def _names(columns: tuple[Column, ...]) -> str:
    return ", ".join(column.name for column in columns)


def _item_update_sql(postgres: bool, count: int) -> str:
    table = BatchItem._meta.db_table
    sets = ", ".join(
        f"{c.name} = " + ITEM_SET_OVERRIDES.get(c.name, "v.{name}").format(table=table, name=c.name)
        for c in ITEM_COLUMNS
        if c.name not in ITEM_KEYS
    )
    where = (
        f"{table}.id = v.id AND {table}.lease_token = v.lease_token "
        f"AND {table}.status = 'running' RETURNING {table}.id"
    )
    names = _names(ITEM_COLUMNS)
    if postgres:  # one array parameter per column instead of thousands of scalars
        arrays = ", ".join(f"%b::{c.pg_type}[]" for c in ITEM_COLUMNS)
        return (
            f"UPDATE {table} SET {sets}, {ITEM_RELEASE} FROM unnest({arrays}) AS v({names}) "
            f"WHERE {where}"
        )
    marks = "(" + ", ".join(["%s"] * len(ITEM_COLUMNS)) + ")"
    return (
        f"WITH v({names}) AS (VALUES {', '.join([marks] * count)}) "
        f"UPDATE {table} SET {sets}, {ITEM_RELEASE} FROM v WHERE {where}"
    )


def _attempt_insert_sql(postgres: bool, count: int) -> str:
    table = BatchAttempt._meta.db_table
    names = _names(ATTEMPT_COLUMNS)
    if postgres:
        arrays = ", ".join(f"%b::{c.pg_type}[]" for c in ATTEMPT_COLUMNS)
        return (
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
        )
    marks = "(" + ", ".join(["%s"] * len(ATTEMPT_COLUMNS)) + ")"
    return (
        f"INSERT INTO {table} ({names}) VALUES {', '.join([marks] * count)} ON CONFLICT DO NOTHING"
    )


def _parameters(postgres: bool, values: list[tuple]) -> list:
    if postgres:  # column arrays
        return [list(column) for column in zip(*values, strict=True)]
    return [value for row in values for value in row]


def datetime_adapter() -> Callable[[Any], Any]:
    """Datetime -> DB parameter, cheaply: SQLite stores naive UTC text (as Django does)."""
    if connection.vendor != "sqlite":
        return lambda value: value
    utc = datetime.UTC

    def adapt(value: Any) -> str | None:
        if value is None:
            return None
        return str(value.astimezone(utc).replace(tzinfo=None))

    return adapt


def _write_cursor(postgres: bool):
    """On PostgreSQL a server-side-binding cursor, so arrays go in binary, unquoted."""
    if not postgres:
        return connection.cursor()
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


# --- claiming ------------------------------------------------------------------------------


def items_claim(
    *,
    job_id: int,
    worker_id: str,
    lease_seconds: float,
    limit: int,
    cap: int,
    held: int,
    start: bool,
    api_key_id: int | None = None,
    key_cap: int = 0,
) -> list[Claimed]:
    """Lease up to `limit` claimable items in one statement. The job's `cap` counts other
    workers' leases (`held` are this worker's); `key_cap` (0 = none) bounds the leases of
    all jobs of the API key, every worker included."""
    now = timezone.now()
    token = uuid.uuid4().hex
    postgres = connection.vendor == "postgresql"
    adapt = datetime_adapter()
    table = BatchItem._meta.db_table
    job_table = BatchJob._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        # The job must still be claimable; FOR KEY SHARE waits for a concurrent pause/cancel
        # (which locks the job row FOR UPDATE) so no item is claimed after it.
        cursor.execute(
            f"SELECT status FROM {job_table} WHERE id = %s"
            + (" FOR KEY SHARE" if postgres else ""),
            [job_id],
        )
        row = cursor.fetchone()
        if row is None or row[0] not in BatchJob.ACTIVE:
            raise JobNotActive(row[0] if row else JobStatus.CANCELLED)
        cursor.execute(
            f"SELECT COUNT(*) FROM {table} WHERE job_id = %s AND status = 'running' "
            "AND worker <> %s",
            [job_id, worker_id],
        )
        limit = min(limit, cap - held - cursor.fetchone()[0])
        if key_cap and api_key_id is not None and limit > 0:
            cursor.execute(
                f"SELECT COUNT(*) FROM {table} i JOIN {job_table} j ON i.job_id = j.id "
                "WHERE j.api_key_id = %s AND i.status = 'running'",
                [api_key_id],
            )
            limit = min(limit, key_cap - cursor.fetchone()[0])
        if limit <= 0:
            return []
        lock = " FOR UPDATE SKIP LOCKED" if postgres else ""
        params_column = "params::text" if postgres else "params"
        cursor.execute(
            f"UPDATE {table} SET status = 'running', lease_token = %s, "
            "lease_expires_at = %s, worker = %s WHERE id IN ("
            f"SELECT id FROM {table} WHERE job_id = %s AND status = 'pending' "
            "AND (available_at IS NULL OR available_at <= %s) "
            f"ORDER BY id LIMIT %s{lock}) "
            f"RETURNING id, custom_id, {params_column}, attempts",
            [
                token,
                adapt(now + datetime.timedelta(seconds=lease_seconds)),
                worker_id,
                job_id,
                adapt(now),
                limit,
            ],
        )
        rows = sorted(cursor.fetchall())
        if rows and start:
            BatchJob.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
                status=JobStatus.RUNNING, started_at=now
            )
            BatchJob.objects.filter(pk=job_id, started_at__isnull=True).update(started_at=now)
    return [
        Claimed(id=i, custom_id=c, params=json.loads(p), attempts=a, token=token, raw=p)
        for i, c, p, a in rows
    ]


def leases_renew(*, worker_id: str, lease_seconds: float, exclude: set[int]) -> int:
    """Extend this worker's leases, except those of items it gave up on (`exclude`): their
    lease runs out and another claim decides."""
    items = BatchItem.objects.filter(worker=worker_id, status=ItemStatus.RUNNING)
    if exclude:
        items = items.exclude(pk__in=exclude)
    return items.update(lease_expires_at=timezone.now() + datetime.timedelta(seconds=lease_seconds))


# --- writing -------------------------------------------------------------------------------


def outcomes_write(outcomes: list[Outcome]) -> set[int]:
    """Apply outcomes whose lease is still ours and insert their attempts; return the ids.

    An item can have two outcomes in one flush (a stale copy whose lease was released and
    the copy of its new claim): each round holds one outcome per item, so "this id was
    updated" always means "this outcome's token matched", and a stale attempt is never
    inserted next to another outcome's update. All rounds share one transaction.
    """
    rounds: list[list[Outcome]] = []
    seen: dict[int, int] = {}
    for outcome in outcomes:
        index = seen.get(outcome.item.id, 0)
        seen[outcome.item.id] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(outcome)
    if len(rounds) == 1:
        return _write_round(outcomes)
    accepted: set[int] = set()
    with transaction.atomic():
        for unique in rounds:
            accepted |= _write_round(unique)
    return accepted


def _write_round(outcomes: list[Outcome]) -> set[int]:
    """Write outcomes of distinct items (see `outcomes_write`): few statements, so the DB
    thread rarely waits for the GIL."""
    adapt = datetime_adapter()
    postgres = connection.vendor == "postgresql"
    rows = [Row(outcome=o, result=dumps(o.result), adapt=adapt) for o in outcomes]
    accepted: set[int] = set()
    with transaction.atomic(), _write_cursor(postgres) as cursor:
        for start in range(0, len(rows), CHUNK):
            chunk = _values(ITEM_COLUMNS, rows[start : start + CHUNK])
            cursor.execute(_item_update_sql(postgres, len(chunk)), _parameters(postgres, chunk))
            accepted.update(r[0] for r in cursor.fetchall())
        if settings.TOKENFLOW_FAULT_FLUSH_SLEEP:  # fault injection (tests only): see settings
            time.sleep(settings.TOKENFLOW_FAULT_FLUSH_SLEEP)
        attempts = [
            r for r in rows if r.outcome.attempt is not None and r.outcome.item.id in accepted
        ]
        for start in range(0, len(attempts), CHUNK):
            chunk = _values(ATTEMPT_COLUMNS, attempts[start : start + CHUNK])
            cursor.execute(_attempt_insert_sql(postgres, len(chunk)), _parameters(postgres, chunk))
    return accepted


@dataclass
class WriteReport:
    accepted: set[int]
    unwritable: list[Outcome]  # written as failed items instead of their result
    abandoned: set[int]  # not even the failure could be written: left to lease expiry


def unwritable_outcome(outcome: Outcome, exc: Exception) -> Outcome:
    """The outcome turned into a failure that can always be written: no result, no new
    params, and a message that quotes none of the offending data."""
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    reason = reason.replace("\x00", "")[:300]
    error = {
        "code": "result_unwritable",
        "message": f"The result could not be stored ({reason}).",
    }
    attempt = None
    if outcome.attempt is not None:
        attempt = {
            **outcome.attempt,
            "status": BatchAttempt.Status.FAILED,
            "request": outcome.item.params,
            "result": None,
            "error_code": error["code"],
            "error_message": error["message"],
            "retryable": False,
        }
    return replace(
        outcome,
        status=ItemStatus.FAILED,
        result=None,
        error=error,
        params=None,
        finished_at=outcome.finished_at or timezone.now(),
        available_at=None,
        attempt=attempt,
    )


def outcomes_write_isolating(outcomes: list[Outcome]) -> WriteReport:
    """`outcomes_write`, and when a row is refused (not the database being unreachable:
    TRANSIENT errors propagate so the caller retries everything later), bisect down to the
    refused rows and store them as `result_unwritable` failures; the others are written."""
    report = WriteReport(accepted=set(), unwritable=[], abandoned=set())
    _write_part(outcomes, report)
    return report


def _write_part(outcomes: list[Outcome], report: WriteReport) -> None:
    if not outcomes:
        return
    try:
        report.accepted |= outcomes_write(outcomes)
        return
    except TRANSIENT:
        raise
    except Exception as exc:
        if len(outcomes) > 1:
            middle = len(outcomes) // 2
            _write_part(outcomes[:middle], report)
            _write_part(outcomes[middle:], report)
            return
        (outcome,) = outcomes
        failure = unwritable_outcome(outcome, exc)
        logger.warning(
            "Batch item %s: result cannot be stored (%s); failing the item",
            outcome.item.id,
            failure.error["message"],
        )
    try:
        report.accepted |= outcomes_write([failure])
        report.unwritable.append(failure)
    except TRANSIENT:
        raise
    except Exception:
        logger.exception("Batch item %s: not even its failure can be stored", outcome.item.id)
        report.abandoned.add(outcome.item.id)
