"""Exactly one active replica, through a coordination.k8s.io Lease.

kopf's peering is a priority freeze, not a lease: a replica pauses while a live peer of higher
priority exists, and when peers of equal priority meet, every one of them pauses (itself
included) until the others are gone, so identical replicas would stand each other still. Here
a replica acts only while it holds an unexpired Lease; a holder that stops renewing loses it
after `leaseDurationSeconds`, and the next replica takes over.

Every replica watches its Lease — in the Lease's own namespace, by a field selector on its
name, whatever namespaces the operator serves — so a standby tries again the moment the Lease
is released or deleted, and otherwise exactly when the holder's term runs out rather than on
its next poll. The watch's events are also the operator's liveness heartbeat (`on_event`), and so
are its failures (each followed by a reconnect) and renewals the API server's address refuses
(the server is down or restarting; a silent watch then is no sign of a stale one): liveness fails
only for a watch connected yet silent while the server is not known to be gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_operator import k8s

log = logging.getLogger(__name__)


def _micro(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(ts, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def expires(spec: dict[str, Any]) -> datetime | None:
    """Pure: when the holder's term ends (None: no holder, or no time to tell)."""
    if not spec.get("holderIdentity"):
        return None
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    return None if renewed is None else renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))


def may_take(spec: dict[str, Any], identity: str, now: datetime) -> bool:
    """Pure: may `identity` hold a Lease whose spec is `spec` at `now`?"""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 15)
    return renewed is None or now > renewed + timedelta(seconds=duration)


class LeaderElector:
    """Acquires and renews the Lease in a thread; `is_leader()` gates every handler."""

    def __init__(self, name: str, namespace: str, identity: str, duration: int,
                 on_event: Callable[[], None] | None = None) -> None:
        self.name, self.namespace, self.identity, self.duration = name, namespace, identity, duration
        self.on_event = on_event
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_try: float | None = None  # seconds until the holder's term ends, when a standby
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name="leader-lease-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop renewing and release the Lease so a peer takes over at once; never create it again."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._leader.is_set():
            self._leader.clear()
            try:
                k8s.patch_object("Lease", self.namespace, self.name, {"spec": {"holderIdentity": None}})
            except k8s.ApiError as exc:
                log.warning("could not release the lease: %s", exc)

    def _run(self) -> None:
        period = max(1.0, self.duration / 3)
        while not self._stop.is_set():
            self._next_try = None
            try:
                self._try_once()
            except Exception as exc:  # noqa: BLE001 - a failed renewal must never kill the thread
                log.warning("leader election: %s", exc)
                self._leader.clear()
                if k8s.server_refused(exc) and self.on_event is not None:
                    # Nothing listens at the API server's address (it restarts): the Lease watch's
                    # silence says nothing about the watch, so it must not count as stale.
                    self.on_event()
            wait = period if self._next_try is None else min(period, max(0.05, self._next_try))
            self._wake.wait(wait)
            self._wake.clear()

    def _watch(self) -> None:
        """Watch the Lease; wake the election when a standby may take it now."""
        path = k8s.KINDS["Lease"].path(self.namespace)
        while not self._stop.is_set():
            try:
                for type_, lease in k8s.watch(path, {"fieldSelector": f"metadata.name={self.name}"}):
                    if self.on_event is not None:
                        self.on_event()
                    if self._stop.is_set():
                        return
                    spec = lease.get("spec") or {}
                    if not self._leader.is_set() and (type_ == "DELETED" or not spec.get("holderIdentity")):
                        self._wake.set()  # released (a graceful stop) or gone: try at once
            except Exception as exc:  # noqa: BLE001 - a broken watch is started again
                log.info("leader lease watch: %s", exc)
                # A watch that failed is not stale: the loop is alive and reconnects (an API server
                # restarting or down refuses it every second). Restarting the operator would gain
                # nothing, so this keeps liveness passing; only a connected, silent stream fails it.
                if self.on_event is not None:
                    self.on_event()
                self._stop.wait(1.0)

    def _try_once(self) -> None:
        now = datetime.now(timezone.utc)
        lease = k8s.get_object("Lease", self.namespace, self.name)
        if lease is None:
            if self._stop.is_set():
                return  # stopping (e.g. an uninstall deleted the Lease): leave it deleted
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.duration,
                    "acquireTime": _micro(now),
                    "renewTime": _micro(now),
                    "leaseTransitions": 0,
                },
            }
            try:
                k8s.request("POST", k8s.KINDS["Lease"].path(self.namespace), body)
            except k8s.ApiError as exc:
                if exc.status == 409:
                    return  # a peer created it first; look again next period
                raise
            self._became_leader()
            return
        spec = lease.get("spec") or {}
        if not may_take(spec, self.identity, now):
            if self._leader.is_set():
                log.warning("lost leadership to %s", spec.get("holderIdentity"))
            self._leader.clear()
            ends = expires(spec)
            if ends is not None:
                self._next_try = (ends - now).total_seconds() + 0.05  # try again as the term runs out
            return
        if self._stop.is_set():
            return  # stopping: never take (or renew) the Lease again
        new_spec: dict[str, Any] = {"holderIdentity": self.identity, "renewTime": _micro(now),
                                    "leaseDurationSeconds": self.duration}
        if spec.get("holderIdentity") != self.identity:
            new_spec["acquireTime"] = _micro(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        # The resourceVersion makes this a compare-and-swap: two replicas cannot both win.
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": new_spec}
        try:
            k8s.patch_object("Lease", self.namespace, self.name, patch)
        except k8s.ApiError as exc:
            if exc.status == 409:
                self._leader.clear()
                return
            raise
        self._became_leader()

    def _became_leader(self) -> None:
        if not self._leader.is_set():
            log.info("acquired leadership as %s", self.identity)
        self._leader.set()
