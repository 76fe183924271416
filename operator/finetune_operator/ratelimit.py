"""Client-side rate limits: a token bucket for API requests and the status-progress write budget.

Pure: the clock (and the sleep of the blocking `acquire`) is injected, so tests are exact.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up (GCRA: a reservation is a time slot)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst ≥ 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock, self._sleep = clock, sleep
        self._tat = float("-inf")  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    def reserve(self, at: float | None = None) -> float:
        """Take the next free slot at or after `at` (default now); returns that slot's time."""
        with self._lock:
            now = self._clock() if at is None else at
            tat = max(self._tat, now)
            slot = max(now, tat - self._tolerance)
            self._tat = max(tat, slot) + self._interval
            return slot

    def acquire(self) -> float:
        """Block until a token is available; returns the seconds waited."""
        now = self._clock()
        wait = self.reserve(now) - now
        if wait > 0:
            self._sleep(wait)
        return max(0.0, wait)


# Priorities of API requests, most urgent first (`PriorityTokenBucket`).
CRITICAL = 0  # creates on a job's way to its next step, and state changes
NORMAL = 1  # every other request
LOW = 2  # progress status writes, Events, objects made ahead of need, the audit relist


class PriorityTokenBucket:
    """`rate` tokens per second, at most `burst` saved up, handed out by priority.

    A waiter is served only when it is first in (priority, arrival) order, so a critical request
    overtakes every waiting lower-priority one; within one priority it is first come, first
    served. Nothing is reserved ahead, so a backlog of LOW requests never delays a CRITICAL one
    by more than the token it is already being given. The clock is injected; waiting uses a
    condition whose timeout is computed from it, and `wake` re-checks (tests move the clock).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst ≥ 1")
        self._rate, self._burst = float(rate), float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._cond = threading.Condition()
        self._waiters: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrivals = itertools.count()

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def acquire(self, priority: int = NORMAL) -> float:
        """Block until this request may go out; returns the seconds waited (on the injected clock)."""
        with self._cond:
            start = self._clock()
            ticket = (priority, next(self._arrivals))
            heapq.heappush(self._waiters, ticket)
            try:
                while True:
                    now = self._clock()
                    self._refill(now)
                    first = self._waiters[0] == ticket
                    if first and self._tokens >= 1.0:
                        self._tokens -= 1.0
                        return max(0.0, now - start)
                    # The first waiter sleeps until its token; the others until they are notified.
                    self._cond.wait((1.0 - self._tokens) / self._rate if first else None)
            finally:
                self._waiters.remove(ticket)
                heapq.heapify(self._waiters)
                self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiters)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class WriteBudget:
    """When a job's progress-only status write may go out.

    Each key at most every `per_key_seconds`, all keys together at most `rate` per second.
    `admit` answers 0 (write now) or the seconds to wait; the slot is reserved, so a thousand
    waiting jobs are spread over time instead of retrying in a herd. Urgent writes (a phase
    change, a terminal state) call `record` and are never held back.
    """

    def __init__(self, per_key_seconds: float, rate: float, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_key = per_key_seconds
        self._clock = clock
        self._bucket = TokenBucket(rate, burst if burst is not None else max(1, int(rate)), clock)
        self._last: dict[Hashable, float] = {}
        self._grants: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> float:
        now = self._clock()
        with self._lock:
            grant = self._grants.get(key)
            if grant is not None:
                if now + 1e-9 >= grant:
                    del self._grants[key]
                    self._last[key] = now
                    return 0.0
                return grant - now
            earliest = self._earliest(key)
            if earliest > now:
                return earliest - now  # no slot taken: a future reservation would block the others
            slot = self._bucket.reserve(now)
            if slot <= now:
                self._last[key] = now
                return 0.0
            self._grants[key] = slot
            return slot - now

    def deferral(self, key: Hashable) -> float:
        """Seconds before `key` may ask for a slot or use the one it holds (0: now); takes no slot."""
        now = self._clock()
        with self._lock:
            grant = self._grants.get(key)
            if grant is not None:
                return max(0.0, grant - now)
            return max(0.0, self._earliest(key) - now)

    def _earliest(self, key: Hashable) -> float:
        """When `key` may next ask for a slot (the lock is held)."""
        return self._last.get(key, float("-inf")) + self._per_key

    def record(self, key: Hashable) -> None:
        """An urgent write went out for `key` now."""
        with self._lock:
            self._last[key] = self._clock()

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._grants.pop(key, None)
