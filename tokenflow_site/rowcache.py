"""Per-process caches of database rows that the event loop may read without I/O.

An entry is at most `seconds` old (1 s: a change made by any process, even a raw SQL
update, is seen everywhere within that time). Rows asked for on the event loop stay fresh
without a request waiting: a background task re-reads all of them every
TOKENFLOW_KEY_REFRESH_SECONDS in one query, until none has been asked for in `idle`
seconds. So a row used once every few seconds is still served from memory, and a request
never blocks the loop on the database. Saves in this process call `forget` (signals),
which drops the entry at once; the epoch it moves keeps a refresh that read the rows
before that change from putting the old row back.

Used for API keys (accounts.selectors) and models (routing.services.models).
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RowCache(Generic[K, V]):
    """`load(keys) -> {key: row}` reads rows (missing ones: gone or inactive, never cached)."""

    def __init__(
        self,
        name: str,
        load: Callable[[list[K]], dict[K, V]],
        *,
        seconds: float = 1.0,
        idle: float = 60.0,
        max_entries: int = 10_000,
    ) -> None:
        self.name = name
        self.load = load
        self.seconds = seconds
        self.idle = idle
        self.max_entries = max_entries
        self.entries: dict[K, tuple[float, V]] = {}
        self.used: dict[K, float] = {}
        self.epoch = 0
        self._task: asyncio.Task | None = None

    def fresh(self, key: K) -> V | None:
        """The cached row while it is fresh (shared: callers that annotate it copy it)."""
        entry = self.entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def fresh_on_loop(self, key: K) -> V | None:
        """`fresh`, called on the event loop: the key is kept fresh from now on."""
        self.used[key] = time.monotonic()
        self._refresher_ensure()
        return self.fresh(key)

    def read(self, key: K) -> V | None:
        """The row, from the cache while fresh, else loaded (and cached if it exists)."""
        row = self.fresh(key)
        if row is not None:
            return row
        epoch, read_at = self.epoch, time.monotonic()
        row = self.load([key]).get(key)
        if row is None:
            self.entries.pop(key, None)
        elif epoch == self.epoch:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[key] = (read_at + self.seconds, row)
        return row

    def forget(self, key: K | None = None) -> None:
        """Drop one entry (or all), now and again when the current transaction commits
        (a reader in between may have read the row as it was before)."""

        def drop() -> None:
            self.epoch += 1
            if key is None:
                self.entries.clear()
            else:
                self.entries.pop(key, None)

        drop()
        transaction.on_commit(drop)

    def refresh(self, keys: list[K]) -> None:
        """One load for `keys`: rows found get a fresh entry, the others leave the cache."""
        epoch, read_at = self.epoch, time.monotonic()
        rows = self.load(keys)
        if epoch != self.epoch:  # forgotten meanwhile: the next reader loads it
            return
        for key in keys:
            if key in rows:
                self.entries[key] = (read_at + self.seconds, rows[key])
            else:
                self.entries.pop(key, None)

    def _refresh_in_worker(self, keys: list[K]) -> None:
        # A worker thread sees no request signals: drop its connection when it is too old
        # or broken (a database restart), as a request thread would.
        close_old_connections()
        self.refresh(keys)

    def _refresher_ensure(self) -> None:
        if settings.TOKENFLOW_KEY_REFRESH_SECONDS <= 0:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        # Its own context, not the request's (whose thread-sensitive executor ends with it).
        self._task = loop.create_task(self._refresh_loop(), context=contextvars.Context())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.TOKENFLOW_KEY_REFRESH_SECONDS)
            idle_before = time.monotonic() - self.idle
            for key in [k for k, used in self.used.items() if used < idle_before]:
                self.used.pop(key, None)
            if not self.used:
                return
            try:
                await sync_to_async(self._refresh_in_worker, thread_sensitive=False)(
                    list(self.used)
                )
            except Exception:  # noqa: BLE001 - the database is down: entries simply expire
                logger.warning("%s cache refresh failed", self.name, exc_info=True)
