"""The only module that talks to the Kubernetes API.

Objects travel as plain dicts (the same shape kopf hands to handlers), so the pure modules
never see client classes. Every call is counted for the API-error metric.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from kubernetes import client, config as kube_config
from kubernetes.client.rest import ApiException

from finetune_operator import naming, observability
from finetune_operator.conditions import now_rfc3339
from finetune_operator import ratelimit
from finetune_operator.ratelimit import PriorityTokenBucket

log = logging.getLogger(__name__)

GROUP = "finetune.dev"
VERSION = "v1alpha1"
PLURAL = "finetunejobs"

_local = threading.local()
_lock = threading.Lock()
_configured = False
# Every request except the leader Lease's goes through this client-side budget (client-go's
# flowcontrol); the Lease is exempt so a flood of writes never costs the leadership. Requests
# wait by priority (`priority()`): a job's next-step creates and state changes go ahead of
# progress writes, Events and objects made ahead of need.
_limiter: PriorityTokenBucket | None = None
PARTIAL_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when none came back)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


def configure() -> None:
    """Load in-cluster config or the kubeconfig once per process."""
    global _configured
    with _lock:
        if _configured:
            return
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            kube_config.load_kube_config()
        _configured = True


def set_rate_limit(qps: float, burst: int) -> None:
    """Limit this process's API requests to `qps` per second with bursts of `burst`."""
    global _limiter
    _limiter = PriorityTokenBucket(qps, burst)


@contextmanager
def priority(level: int) -> Iterator[None]:
    """Requests of this thread inside the block wait in the rate limiter at `level` (ratelimit.CRITICAL…LOW)."""
    before = getattr(_local, "priority", ratelimit.NORMAL)
    _local.priority = level
    try:
        yield
    finally:
        _local.priority = before


def current_priority() -> int:
    return int(getattr(_local, "priority", ratelimit.NORMAL))


def _api() -> client.ApiClient:
    # urllib3 pools are thread-safe, but ApiClient holds per-call state: one per thread.
    api = getattr(_local, "api", None)
    if api is None:
        configure()
        api = client.ApiClient()
        _local.api = api
    return api


def request(
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, Any] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> dict[str, Any]:
    """One API call returning the decoded JSON body; raises ApiError on failure."""
    api = _api()
    url = path + (("?" + urlencode(query)) if query else "")
    headers = {"Accept": accept, "Content-Type": content_type}
    if _limiter is not None and "/leases" not in path:
        waited = _limiter.acquire(current_priority())
        if waited:
            observability.RATE_LIMITED_SECONDS.inc(waited)
    observability.API_REQUESTS.labels(method=method).inc()
    sent = time.monotonic()
    try:
        try:
            resp = api.call_api(
                url, method, header_params=headers, body=body, auth_settings=["BearerToken"],
                _preload_content=False, _return_http_data_only=True, _request_timeout=30,
            )
        except ApiException as exc:
            observability.API_ERRORS.labels(method=method, status=str(exc.status or 0)).inc()
            raise ApiError(int(exc.status or 0), str(exc.reason), str(exc.body or "")) from exc
        data = resp.data
        return json.loads(data) if data else {}
    finally:
        observability.API_SECONDS.labels(method=method).observe(time.monotonic() - sent)


def server_refused(exc: BaseException) -> bool:
    """Did the API server's address refuse (or reset) the connection? Then nothing listens there
    now (a restart, an outage): unlike a timeout, this is the server's answer, not silence."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (ConnectionRefusedError, ConnectionResetError)):
            return True
        reason = getattr(cur, "reason", None)  # urllib3's MaxRetryError keeps the last error here
        todo += [cur.__cause__, cur.__context__, reason if isinstance(reason, BaseException) else None]
    return False


def watch(path: str, query: dict[str, Any], timeout_seconds: int = 120) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream one watch request's events as (type, object) until the server ends it.

    Not rate-limited (a watch is one long request). Raises ApiError when the request fails or
    the stream reports an error (e.g. 410 Gone): the caller starts a new watch.
    """
    api = _api()
    params = dict(query, watch="true", timeoutSeconds=timeout_seconds)
    try:
        resp = api.call_api(
            path + "?" + urlencode(params), "GET", header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=(30, timeout_seconds + 30),
        )
    except ApiException as exc:
        raise ApiError(int(exc.status or 0), str(exc.reason), str(exc.body or "")) from exc
    pending = b""
    try:
        for chunk in resp.stream(amt=None, decode_content=False):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("reason") or "Error"), str(obj.get("message") or ""))
                yield str(event.get("type")), obj
    finally:
        resp.release_conn()


# --- FineTuneJobs -------------------------------------------------------------------------

def ftj_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def get_ftj(namespace: str, name: str) -> dict[str, Any] | None:
    return get(ftj_path(namespace, name))


def list_ftjs(namespace: str | None = None) -> list[dict[str, Any]]:
    path = ftj_path(namespace) if namespace else f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return list(request("GET", path).get("items", []))


def patch_ftj_status(namespace: str, name: str, status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    """Merge-patch the status subresource.

    The resourceVersion makes the write conditional: if the object moved since we read it,
    we get a 409 and reconcile again from fresh state instead of overwriting newer conditions.
    """
    patch: dict[str, Any] = {"status": status}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return request("PATCH", ftj_path(namespace, name) + "/status", patch, content_type="application/merge-patch+json")


# --- generic objects ----------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    api_path: str  # "/api/v1" or "/apis/batch/v1"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str = "") -> str:
        base = f"{self.api_path}/namespaces/{namespace}/{self.plural}" if self.namespaced else f"{self.api_path}/{self.plural}"
        return f"{base}/{name}" if name else base


KINDS: dict[str, Kind] = {
    "Pod": Kind("/api/v1", "pods"),
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "ServiceAccount": Kind("/api/v1", "serviceaccounts"),
    "Event": Kind("/api/v1", "events"),
    "Node": Kind("/api/v1", "nodes", namespaced=False),
    "Job": Kind("/apis/batch/v1", "jobs"),
    "Role": Kind("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": Kind("/apis/coordination.k8s.io/v1", "leases"),
}


def get(path: str) -> dict[str, Any] | None:
    """GET an object; None when it does not exist."""
    try:
        return request("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def get_object(kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    return get(KINDS[kind].path(namespace, name))


def list_objects(kind: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
    query = {"labelSelector": label_selector} if label_selector else None
    return list(request("GET", KINDS[kind].path(namespace), query=query).get("items", []))


def list_nodes() -> list[dict[str, Any]]:
    return list_objects("Node", None)


def list_metadata(path: str, label_selector: str = "", page: int = 500) -> list[dict[str, Any]]:
    """Metadata only (PartialObjectMetadataList), paged: the cheap audit list of a collection."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query: dict[str, Any] = {"limit": page}
        if label_selector:
            query["labelSelector"] = label_selector
        if token:
            query["continue"] = token
        data = request("GET", path, query=query, accept=PARTIAL_METADATA_LIST)
        items.extend(item.get("metadata") or {} for item in data.get("items") or [])
        token = (data.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


def collection_path(kind: str, namespace: str | None) -> str:
    """The list path of `kind` ("FineTuneJob" or a KINDS key), cluster-wide when namespace is None."""
    if kind == "FineTuneJob":
        return ftj_path(namespace) if namespace else f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    spec = KINDS[kind]
    if not spec.namespaced or namespace is None:
        return f"{spec.api_path}/{spec.plural}"
    return spec.path(namespace)


class ForeignObject(Exception):
    """An object with our deterministic name exists but belongs to another owner."""


def ensure(obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """Create `obj`, or adopt the existing one only if its controller is `owner_uid`.

    A 409 never means "create another": it means the object exists. If its controller is a
    different FineTuneJob (a predecessor of the same name whose children are still being
    garbage-collected), ForeignObject is raised and the caller waits.
    """
    kind = KINDS[obj["kind"]]
    namespace = obj["metadata"].get("namespace")
    try:
        return request("POST", kind.path(namespace), obj)
    except ApiError as exc:
        if exc.status != 409:
            raise
    existing = get_object(obj["kind"], namespace, obj["metadata"]["name"])
    if existing is None:  # deleted between our create and get: try once more next reconcile
        raise ForeignObject(f"{obj['kind']} {obj['metadata']['name']} is being deleted")
    if naming.controller_uid(existing) != owner_uid:
        raise ForeignObject(
            f"{obj['kind']} {namespace}/{obj['metadata']['name']} belongs to another owner "
            f"(uid {naming.controller_uid(existing)}); waiting for it to be removed"
        )
    return existing


def patch_object(kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return request("PATCH", KINDS[kind].path(namespace, name), patch, content_type="application/merge-patch+json")


def delete_object(
    kind: str, namespace: str | None, name: str, uid: str | None = None, grace_seconds: int | None = None
) -> None:
    """Delete with background propagation; a precondition on uid avoids deleting a successor.

    `grace_seconds=0` is a force delete: the object goes at once, without waiting for a kubelet.
    """
    body: dict[str, Any] = {"propagationPolicy": "Background"}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    if uid:
        body["preconditions"] = {"uid": uid}
    try:
        request("DELETE", KINDS[kind].path(namespace, name), body)
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise


def fail_pod(namespace: str, name: str, uid: str, reason: str, message: str) -> None:
    """Mark a pod no kubelet will ever finish as Failed with a DisruptionTarget condition, as the pod
    garbage collector does before it force-deletes a pod on an out-of-service node: the Job counts
    a disruption (podFailurePolicy Ignore) and releases the pod's tracking finalizer."""
    patch = {"metadata": {"uid": uid},  # a precondition: never a successor with the same name
             "status": {"phase": "Failed", "conditions": [
                 {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message[:1024],
                  "lastTransitionTime": now_rfc3339()}]}}
    try:
        request("PATCH", KINDS["Pod"].path(namespace, name) + "/status", patch,
                content_type="application/strategic-merge-patch+json")
    except ApiError as exc:
        if exc.status not in (404, 409, 422):
            raise


def emit_event(ftj: dict[str, Any], type_: str, reason: str, message: str, component: str) -> None:
    """Record a core/v1 Event on the FineTuneJob; failures are logged, never fatal."""
    meta = ftj["metadata"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": ftj.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": ftj.get("kind", "FineTuneJob"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "count": 1,
    }
    stamp = now_rfc3339()
    event["firstTimestamp"] = event["lastTimestamp"] = stamp
    try:
        request("POST", KINDS["Event"].path(meta["namespace"]), event)
    except ApiError as exc:
        log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)
