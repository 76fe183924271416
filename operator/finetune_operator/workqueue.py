"""A work queue of FineTuneJob keys, shaped like client-go's rate-limited workqueue.

- A key is queued at most once: adding a queued key is a no-op (dedup).
- A key being processed is never handed to a second worker; adding it meanwhile marks it
  dirty, and it is queued again when the first worker calls `done` (one reconcile per key).
- `retry` re-adds a failed key after an exponential backoff; `forget` resets it.
- `add_after` delays a key (the progress write budget); an urgent `add` (a phase change)
  overtakes the delay and goes to the front.
- How long each key sat ready before a worker took it is reported (`QueueStats.waited`,
  client-go's queue_duration): the share of a reconcile's latency spent waiting for a worker.

Pure and thread-safe; the clock is injected so tests decide what time it is.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class QueueStats:
    """Counters the metrics exporter reads."""

    adds: int = 0
    retries: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    on_change: Callable[[str, int], None] | None = field(default=None, repr=False)
    on_wait: Callable[[float], None] | None = field(default=None, repr=False)

    def event(self, what: str, value: int = 1) -> None:
        if what == "add":
            self.adds += value
        elif what == "retry":
            self.retries += value
        if self.on_change is not None:
            self.on_change(what, value)

    def waited(self, seconds: float) -> None:
        """A key was handed to a worker `seconds` after it became ready (time spent queued)."""
        self.waits += 1
        self.wait_seconds += seconds
        if self.on_wait is not None:
            self.on_wait(seconds)


class WorkQueue(Generic[K]):
    """Deduplicating, per-key serialised, delayed and rate-limited queue of keys."""

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, stats: QueueStats | None = None) -> None:
        self._clock = clock
        self._base, self._max = base_delay, max_delay
        self._cond = threading.Condition()
        self._urgent: deque[K] = deque()
        self._normal: deque[K] = deque()
        self._queued: dict[K, bool] = {}  # key -> urgent
        self._processing: set[K] = set()
        self._dirty: dict[K, bool] = {}  # added while processing -> urgent
        self._waiting: list[tuple[float, int, K]] = []
        self._ready_at: dict[K, float] = {}
        self._ready_since: dict[K, float] = {}  # queued key -> when it became ready
        self._seq = 0
        self._failures: dict[K, int] = {}
        self._shut = False
        self.stats = stats or QueueStats()

    # adding
    def add(self, key: K, urgent: bool = False) -> None:
        """Queue `key` now. A non-urgent add of a key that waits for its delay leaves it waiting."""
        with self._cond:
            if self._shut:
                return
            if not urgent and key in self._ready_at:
                return
            self._ready_at.pop(key, None)  # an urgent add overtakes the delay
            self._add_locked(key, urgent)

    def _add_locked(self, key: K, urgent: bool) -> None:
        if key in self._processing:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        if key in self._queued:
            if urgent and not self._queued[key]:
                self._queued[key] = True
                self._urgent.append(key)  # the stale entry in the normal deque is skipped
            return
        self._queued[key] = urgent
        self._ready_since[key] = self._clock()
        (self._urgent if urgent else self._normal).append(key)
        self.stats.event("add")
        self.stats.event("depth", len(self._queued))
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` once `delay` seconds have passed; an earlier pending time wins."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shut or key in self._queued:
                return
            ready = self._clock() + delay
            if key in self._ready_at and self._ready_at[key] <= ready:
                return
            self._ready_at[key] = ready
            self._seq += 1
            heapq.heappush(self._waiting, (ready, self._seq, key))
            self._cond.notify()

    def retry(self, key: K) -> float:
        """Re-add a failed key after its exponential backoff; returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = min(self._max, self._base * (2.0 ** n))
        self.stats.event("retry")
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # taking
    def _promote(self) -> float | None:
        """Move delayed keys whose time has come; the seconds until the next one, if any."""
        now = self._clock()
        while self._waiting:
            ready, _, key = self._waiting[0]
            if self._ready_at.get(key) != ready:
                heapq.heappop(self._waiting)  # superseded by an earlier time or an urgent add
                continue
            if ready > now:
                return ready - now
            heapq.heappop(self._waiting)
            del self._ready_at[key]
            self._add_locked(key, False)
        return None

    def _pop(self) -> K | None:
        for dq in (self._urgent, self._normal):
            while dq:
                key = dq.popleft()
                urgent = dq is self._urgent
                if key in self._queued and self._queued[key] == urgent:
                    del self._queued[key]
                    self._processing.add(key)
                    self.stats.event("depth", len(self._queued))
                    self.stats.waited(max(0.0, self._clock() - self._ready_since.pop(key)))
                    return key
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process (marked as processing), or None after `timeout` or shutdown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._shut:
                wait = self._promote()
                key = self._pop()
                if key is not None:
                    return key
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        """Processing of `key` finished; a key added meanwhile is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._add_locked(key, self._dirty.pop(key))

    def shutdown(self) -> None:
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Re-check delayed keys now (tests move the injected clock, then wake the queue)."""
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queued)

    def waiting(self) -> int:
        with self._cond:
            return len(self._ready_at)
