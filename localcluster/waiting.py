"""Waiting for objects with a watch and a deadline (no sleeps, no tight polling)."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

Obj = dict[str, Any]


class WaitTimeout(AssertionError):
    """The object never satisfied the condition; carries the last version seen."""

    def __init__(self, what: str, last: Obj | None, timeout: float) -> None:
        super().__init__(f"{what}: condition not met within {timeout:.0f}s; last seen: {last!r}"[:6000])
        self.last = last


def wait_for_pod(
    api: client.ApiClient,
    namespace: str,
    name: str,
    condition: Callable[[Obj], bool],
    timeout: float = 60.0,
) -> Obj:
    """Return the pod (as a camelCase dict) once ``condition(pod)`` holds.

    ``condition`` may also be satisfied by the pod's disappearance: it is then called with
    ``{}`` (so ``lambda p: not p`` waits for deletion).
    """
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    last: Obj | None = None
    while True:
        try:
            raw = core.read_namespaced_pod(name, namespace, _preload_content=False)
            last = json.loads(raw.data)
        except ApiException as e:
            if e.status != 404:
                raise
            last = {}
        if condition(last):
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"pod {namespace}/{name}", last, timeout)
        rv = last.get("metadata", {}).get("resourceVersion") if last else None
        w = watch.Watch()
        try:
            for ev in w.stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=rv,
                timeout_seconds=max(1, int(min(remaining, 30))),
            ):
                obj: dict[str, Any] = ev["raw_object"]
                if ev["type"] == "DELETED":
                    obj = {}
                elif ev["type"] not in ("ADDED", "MODIFIED"):
                    continue
                last = obj
                if condition(obj):
                    w.stop()
                    return obj
        except ApiException as e:
            if e.status != 410:
                raise
        if time.monotonic() > deadline:
            raise WaitTimeout(f"pod {namespace}/{name}", last, timeout)


def until(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not true within {timeout:.0f}s (last: {last!r})")


def phase(pod: Obj) -> str:
    """The pod's phase ('' when it is gone or has no status)."""
    return str((pod.get("status") or {}).get("phase") or "")


def container_status(pod: Obj, name: str | None = None) -> Obj:
    """The status of container ``name`` (default: the first one), or {}."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for s in statuses:
        if name is None or s.get("name") == name:
            return dict(s)
    return {}
