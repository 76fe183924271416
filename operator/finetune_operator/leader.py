"""Exactly one active replica, through a coordination.k8s.io Lease.

kopf's peering is a priority freeze, not a lease: a replica pauses while a live peer of higher
priority exists, and when peers of equal priority meet, every one of them pauses (itself
included) until the others are gone, so identical replicas would stand each other still. Here
a replica acts only while it holds an unexpired Lease; a holder that stops renewing loses it
after `leaseDurationSeconds`, and the next replica takes over.
"""

from __future__ import annotations

import logging
import threading
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

    def __init__(self, name: str, namespace: str, identity: str, duration: int) -> None:
        self.name, self.namespace, self.identity, self.duration = name, namespace, identity, duration
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the Lease so a peer takes over at once."""
        self._stop.set()
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
            try:
                self._try_once()
            except Exception as exc:  # noqa: BLE001 - a failed renewal must never kill the thread
                log.warning("leader election: %s", exc)
                self._leader.clear()
            self._stop.wait(period)

    def _try_once(self) -> None:
        now = datetime.now(timezone.utc)
        lease = k8s.get_object("Lease", self.namespace, self.name)
        if lease is None:
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
            return
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
