"""Prometheus metrics and the watch-staleness signal behind the liveness probe."""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram

JOBS_BY_STATE = Gauge("finetune_jobs", "FineTuneJobs by state", ["state"])
RECONCILE_SECONDS = Histogram(
    "finetune_reconcile_duration_seconds", "Time to reconcile one FineTuneJob",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
VALIDATION_FAILURES = Counter("finetune_validation_failures_total", "Jobs refused, by reason", ["reason"])
API_ERRORS = Counter("finetune_api_errors_total", "Failed Kubernetes API calls", ["method", "status"])
TRANSITIONS = Counter("finetune_state_transitions_total", "State transitions", ["state"])


class WatchHeartbeat:
    """When the operator last saw a watch event on the leader Lease.

    The leader renews its Lease every few seconds, so every replica's Lease watch receives an
    event at that rhythm. Silence for several renew periods means the watch stream has died
    without an error, a known kopf failure mode; liveness then fails and the pod restarts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def age(self) -> float:
        with self._lock:
            return time.monotonic() - self._last


HEARTBEAT = WatchHeartbeat()
