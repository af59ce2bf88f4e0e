"""The in-process semantic index: per (embedder, scope), the vectors of live cache entries.

The database is the source of truth and the index only an accelerator, so every process
(daphne workers, batch workers) stays correct without any message between them:
- new entries: each lookup first loads the scope's rows with an id above the highest id
  the index has (one indexed range query that returns nothing when nothing changed), so an
  entry stored by another process is seen on the next lookup;
- purged or expired entries: a candidate is read back from the database before it is
  served; a row that is gone is dropped from the index and the next candidate is tried,
  and expiry times are kept in the index, so an expired entry is never a candidate.

Only rows stored by the configured embedder (CacheEntry.embedder: name, dimensions, model
digest) are loaded, so vectors of another embedder are never compared. On the MiniLM path
each entry also gets the static model's vector of its text (made here, ~25 us), for the
prefilter that spares a lookup the MiniLM pass when no entry is even roughly similar.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from response_cache.guard import Features, compatible, features

MAX_SCOPES = 1024  # scopes kept per process (LRU)
MAX_SCOPE_ENTRIES = 5000  # newest entries of one scope kept per process
MAX_GUARD_CHECKS = 2000  # guard checks (~1-5 us each) before a lookup just embeds


@dataclass
class Candidate:
    entry_id: int
    similarity: float


@dataclass
class ScopeIndex:
    dimensions: int
    prefilter: Any = None  # the static embedder whose vectors prefilter the MiniLM path
    ids: list[int] = field(default_factory=list)
    api_keys: list[int | None] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    features: list[Features] = field(default_factory=list)
    vectors: np.ndarray | None = None
    rough: np.ndarray | None = None  # the prefilter's vectors, row for row
    last_id: int = 0

    def __post_init__(self) -> None:
        self.vectors = np.zeros((0, self.dimensions), np.float32)
        if self.prefilter is not None:
            self.rough = np.zeros((0, self.prefilter.dimensions), np.float32)

    def add(self, rows: list[tuple[int, int | None, float, bytes, str]]) -> None:
        vectors, texts = [], []
        for entry_id, api_key_id, expires, blob, text in rows:
            self.last_id = max(self.last_id, entry_id)
            if len(blob) != self.dimensions * 4:  # not this embedder's vector: never compared
                continue
            self.ids.append(entry_id)
            self.api_keys.append(api_key_id)
            self.expires.append(expires)
            self.features.append(features(text))
            vectors.append(np.frombuffer(blob, dtype=np.float32))
            texts.append(text)
        if not vectors:
            return
        self.vectors = np.concatenate([self.vectors, np.stack(vectors)])
        if self.rough is not None:
            self.rough = np.concatenate([self.rough, self.prefilter.embed_many(texts)])
        extra = len(self.ids) - MAX_SCOPE_ENTRIES
        if extra > 0:
            self._keep(np.arange(extra, len(self.ids)))

    def drop(self, entry_id: int) -> None:
        if entry_id in self.ids:
            keep = np.array([i for i, e in enumerate(self.ids) if e != entry_id], dtype=int)
            self._keep(keep)

    def _keep(self, rows: np.ndarray) -> None:
        self.ids = [self.ids[i] for i in rows]
        self.api_keys = [self.api_keys[i] for i in rows]
        self.expires = [self.expires[i] for i in rows]
        self.features = [self.features[i] for i in rows]
        self.vectors = self.vectors[rows] if len(rows) else self.vectors[:0]
        if self.rough is not None:
            self.rough = self.rough[rows] if len(rows) else self.rough[:0]

    def search(
        self,
        vector: np.ndarray,
        *,
        threshold: float,
        api_key_id: int | None,
        shared: bool,
        guard: Features | None,
        limit: int = 8,
        rough: bool = False,
    ) -> list[Candidate]:
        """Live entries of this key (or any key when shared) at or above `threshold`,
        best first, that pass the guard (when given); by the prefilter's vectors when
        `rough` (`vector` is then the query's prefilter vector)."""
        vectors = self.rough if rough else self.vectors
        if not self.ids or vectors is None:
            return []
        sims = vectors @ vector
        now = time.time()
        order = np.argsort(-sims)
        found: list[Candidate] = []
        for row in order:
            similarity = float(sims[row])
            if similarity < threshold or len(found) >= limit:
                break
            if self.expires[row] <= now:
                continue
            if not shared and self.api_keys[row] != api_key_id:
                continue
            if guard is not None and not compatible(guard, self.features[row]):
                continue
            found.append(Candidate(self.ids[row], similarity))
        return found


def _epoch(value) -> float:
    """A DATETIME column as a timestamp (SQLite's driver may hand back a string)."""
    from django.utils.dateparse import parse_datetime

    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class SemanticIndex:
    """(embedder id, scope key) -> ScopeIndex, shared by the process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: OrderedDict[tuple[str, str], ScopeIndex] = OrderedDict()

    def scope(self, key: tuple[str, str], dimensions: int, prefilter=None) -> ScopeIndex:
        with self._lock:
            scope = self._scopes.get(key)
            if scope is not None and scope.prefilter is not prefilter:
                scope = None  # the prefilter was switched on or off: rebuild
            if scope is None:
                scope = self._scopes[key] = ScopeIndex(dimensions, prefilter)
            self._scopes.move_to_end(key)
            while len(self._scopes) > MAX_SCOPES:
                self._scopes.popitem(last=False)
            return scope

    def refresh(self, key: tuple[str, str], dimensions: int, prefilter=None) -> ScopeIndex:
        """The scope (`key`: embedder id, scope key) with every live row of that embedder
        the database has beyond what the index holds."""
        from django.db import connection
        from django.utils import timezone

        from response_cache.models import CacheEntry

        scope = self.scope(key, dimensions, prefilter)
        # Hand-written: it runs on every lookup, where compiling the ORM query would cost
        # more than the (usually empty) answer.
        sql = (
            "SELECT id, api_key_id, expires_at, embedding, query_text FROM "
            f"{CacheEntry._meta.db_table} WHERE scope_key = %s AND embedder = %s AND id > %s "
            "AND expires_at > %s AND embedding IS NOT NULL "
            f"ORDER BY id DESC LIMIT {MAX_SCOPE_ENTRIES}"
        )
        with connection.cursor() as cursor:
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(sql, [key[1], key[0], scope.last_id, now])
            rows = cursor.fetchall()
        if rows:
            with self._lock:
                fresh = [r for r in reversed(rows) if r[0] > scope.last_id]
                scope.add([(i, k, _epoch(e), bytes(b), t) for i, k, e, b, t in fresh])
        return scope

    def may_match(
        self,
        key: tuple[str, str],
        *,
        api_key_id: int | None,
        shared: bool,
        guard: Features | None,
        rough: np.ndarray | None = None,
        rough_threshold: float = 0.0,
    ) -> bool:
        """Whether any live entry of the scope (this key's, unless shared) passes the guard
        and, given the query's prefilter vector `rough`, is at least `rough_threshold`
        similar by it: if none is, no MiniLM similarity can make a hit and the lookup needs
        no MiniLM pass."""
        now = time.time()
        with self._lock:
            scope = self._scopes.get(key)
            if scope is None:
                return False
            close = None
            if rough is not None and scope.rough is not None and len(scope.ids):
                close = (scope.rough @ rough) >= rough_threshold
            for checked, row in enumerate(range(len(scope.ids) - 1, -1, -1)):  # newest first
                if checked >= MAX_GUARD_CHECKS:
                    return True  # a large scope: embedding costs less than checking on
                if close is not None and not close[row]:
                    continue
                if scope.expires[row] <= now:
                    continue
                if not shared and scope.api_keys[row] != api_key_id:
                    continue
                if guard is None or compatible(guard, scope.features[row]):
                    return True
        return False

    def search(self, key: tuple[str, str], vector: np.ndarray, **options) -> list[Candidate]:
        with self._lock:
            scope = self._scopes.get(key)
            return scope.search(vector, **options) if scope is not None else []

    def drop(self, key: tuple[str, str], entry_id: int) -> None:
        with self._lock:
            scope = self._scopes.get(key)
            if scope is not None:
                scope.drop(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()


semantic_index = SemanticIndex()
