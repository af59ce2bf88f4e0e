"""The in-process semantic index: per scope, the MiniLM vectors of live cache entries.

The database is the source of truth and the index only an accelerator, so every process
(daphne workers, batch workers) stays correct without any message between them:
- new entries: each lookup first loads the scope's rows with an id above the highest id
  the index has (one indexed range query that returns nothing when nothing changed), so an
  entry stored by another process is seen on the next lookup;
- purged or expired entries: a candidate is read back from the database before it is
  served; a row that is gone is dropped from the index and the next candidate is tried,
  and expiry times are kept in the index, so an expired entry is never a candidate.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from response_cache.guard import Features, compatible, features

MAX_SCOPES = 1024  # scopes kept per process (LRU)
MAX_SCOPE_ENTRIES = 5000  # newest entries of one scope kept per process
DIMENSIONS = 384  # all-MiniLM-L6-v2


@dataclass
class Candidate:
    entry_id: int
    similarity: float


@dataclass
class ScopeIndex:
    ids: list[int] = field(default_factory=list)
    api_keys: list[int | None] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    features: list[Features] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMENSIONS), np.float32))
    last_id: int = 0

    def add(self, rows: list[tuple[int, int | None, float, bytes, str]]) -> None:
        if not rows:
            return
        vectors = []
        for entry_id, api_key_id, expires, blob, text in rows:
            self.ids.append(entry_id)
            self.api_keys.append(api_key_id)
            self.expires.append(expires)
            self.features.append(features(text))
            vectors.append(np.frombuffer(blob, dtype=np.float32))
            self.last_id = max(self.last_id, entry_id)
        self.vectors = np.concatenate([self.vectors, np.stack(vectors)])
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

    def search(
        self,
        vector: np.ndarray,
        *,
        threshold: float,
        api_key_id: int | None,
        shared: bool,
        guard: Features | None,
        limit: int = 8,
    ) -> list[Candidate]:
        """Live entries of this key (or any key when shared) at or above `threshold`,
        best first, that pass the guard (when given)."""
        if not self.ids:
            return []
        sims = self.vectors @ vector
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


class SemanticIndex:
    """Scope key -> ScopeIndex, shared by the process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: OrderedDict[str, ScopeIndex] = OrderedDict()

    def scope(self, key: str) -> ScopeIndex:
        with self._lock:
            scope = self._scopes.get(key)
            if scope is None:
                scope = self._scopes[key] = ScopeIndex()
            self._scopes.move_to_end(key)
            while len(self._scopes) > MAX_SCOPES:
                self._scopes.popitem(last=False)
            return scope

    def refresh(self, key: str) -> ScopeIndex:
        """The scope with every live row the database has beyond what the index holds."""
        from response_cache.models import CacheEntry

        scope = self.scope(key)
        rows = list(
            CacheEntry.objects.live()
            .filter(scope_key=key, id__gt=scope.last_id, embedding__isnull=False)
            .order_by("-id")
            .values_list("id", "api_key_id", "expires_at", "embedding", "query_text")[
                :MAX_SCOPE_ENTRIES
            ]
        )
        if rows:
            with self._lock:
                fresh = [r for r in reversed(rows) if r[0] > scope.last_id]
                scope.add([(i, k, e.timestamp(), bytes(b), t) for i, k, e, b, t in fresh])
        return scope

    def search(self, key: str, vector: np.ndarray, **options) -> list[Candidate]:
        with self._lock:
            scope = self._scopes.get(key)
            return scope.search(vector, **options) if scope is not None else []

    def drop(self, key: str, entry_id: int) -> None:
        with self._lock:
            scope = self._scopes.get(key)
            if scope is not None:
                scope.drop(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()


semantic_index = SemanticIndex()
