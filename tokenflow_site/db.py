"""Database writes that must survive a short outage (PostgreSQL restarting, a dropped link).

`db_retry` runs a synchronous ORM function off the event loop and, while the database cannot
be reached, closes the broken connection and tries again with backoff, up to
TOKENFLOW_DB_RETRY_SECONDS. The caller's coroutine waits (other requests keep running); the
function must be safe to repeat (an UPDATE by primary key, a guarded state change).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")
UNREACHABLE = (OperationalError, InterfaceError)


def _close_connection() -> None:
    """Drop this thread's (broken) connection so the next query opens a new one."""
    with contextlib.suppress(Exception):
        connection.close()


async def db_retry(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`await sync_to_async(function)(*args, **kwargs)`, retried while the database is
    unreachable; re-raises the last error after TOKENFLOW_DB_RETRY_SECONDS."""
    deadline = time.monotonic() + settings.TOKENFLOW_DB_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return await sync_to_async(function)(*args, **kwargs)
        except UNREACHABLE as exc:
            await sync_to_async(_close_connection)()
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Database unreachable (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
