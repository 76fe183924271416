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
API_REQUESTS = Counter("finetune_api_requests_total", "Kubernetes API requests sent by the operator", ["method"])
API_SECONDS = Histogram(
    "finetune_api_request_duration_seconds",
    "Time from sending a Kubernetes API request to its decoded answer (rate-limiter wait excluded)",
    ["method"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED_SECONDS = Counter("finetune_api_rate_limited_seconds_total",
                               "Seconds API requests waited for the client-side rate limiter")
QUEUE_DEPTH = Gauge("finetune_workqueue_depth", "Job keys waiting in the work queue (ready to process)")
QUEUE_DELAYED = Gauge("finetune_workqueue_delayed", "Job keys waiting for a backoff or the progress write budget")
QUEUE_ADDS = Counter("finetune_workqueue_adds_total", "Job keys added to the work queue")
QUEUE_WAIT_SECONDS = Histogram(
    "finetune_workqueue_queue_duration_seconds", "Time a ready job key waited in the work queue for a worker",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_RETRIES = Counter("finetune_workqueue_retries_total", "Reconciles retried after a failure")
STATUS_WRITES = Counter("finetune_status_writes_total", "Status writes, by kind (progress or change)", ["kind"])
STATUS_DEFERRED = Counter("finetune_status_writes_deferred_total",
                          "Progress-only status writes held back by the write budget")
CACHE_OBJECTS = Gauge("finetune_cache_objects", "Objects in the operator's watch caches", ["kind"])


def queue_event(what: str, value: int) -> None:
    """The work queue's counters, as Prometheus metrics."""
    if what == "add":
        QUEUE_ADDS.inc(value)
    elif what == "retry":
        QUEUE_RETRIES.inc(value)
    elif what == "depth":
        QUEUE_DEPTH.set(value)


def queue_wait(seconds: float) -> None:
    QUEUE_WAIT_SECONDS.observe(seconds)


class WatchHeartbeat:
    """When the operator last heard from its leader Lease's watch: an event, or a failure.

    The leader renews its Lease every few seconds, so every replica's Lease watch receives an
    event at that rhythm. Silence for several renew periods means the watch stream has died
    without an error (a half-open connection), a known kopf failure mode; liveness then fails and
    the pod restarts. A watch that fails and reconnects also beats, and so does a renewal the API
    server's address refuses: while the server restarts or is down the watch is not stale, and a
    restart of the operator would not bring the server back sooner.
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
