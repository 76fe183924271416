"""In-memory watch caches: small typed projections of the objects the reconcile reads.

Pure and thread-safe: kopf's watches feed it (through `handlers`), the work-queue workers read
it, and nothing here talks to the API. A projection keeps only what the decision reads, so a
change that does not matter (a Node heartbeat, a pod's resourceVersion bump) compares equal and
wakes nobody, and 1,000 jobs' children cost kilobytes, not the objects' megabytes.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import naming

GPU_RESOURCE = "nvidia.com/gpu"
# The condition types of pods and Jobs the reconcile reads; the rest (Ready, Initialized, …) churn.
POD_CONDITIONS = ("PodScheduled", "DisruptionTarget")

Key = tuple[str, str]  # (namespace, name) of a FineTuneJob


@dataclass(frozen=True)
class ConditionFacts:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


@dataclass(frozen=True)
class TerminationFacts:
    """A container's last termination: exit code, kubelet reason, decoded termination message."""

    exit_code: int | None
    reason: str
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    owner_uid: str | None  # the FineTuneJob's UID (owner reference, or the UID label for Job pods)
    job_uid: str | None  # the controlling Job's UID for training pods
    component: str
    created: str
    deleting: bool
    phase: str | None
    node: str | None
    image: str | None
    waiting_reason: str = ""
    waiting_message: str = ""
    termination: TerminationFacts | None = None
    conditions: tuple[ConditionFacts, ...] = ()
    spec_hash: str | None = None  # of the spec its configuration was rendered from

    def condition(self, type_: str) -> ConditionFacts | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class JobFacts:
    namespace: str
    name: str
    uid: str
    owner_uid: str | None
    suspend: bool
    active: int
    finished: bool
    conditions: tuple[ConditionFacts, ...] = ()
    failed: int = 0  # pods the Job counted as failed (podFailurePolicy's ignored ones are not)
    spec_hash: str | None = None  # of the spec its pods' configuration was rendered from

    def condition(self, type_: str) -> ConditionFacts | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"


@dataclass(frozen=True)
class ConfigMapFacts:
    namespace: str
    name: str
    uid: str
    owner_uid: str | None
    progress: Mapping[str, Any] | None = None  # the decoded progress.json of the progress ConfigMap


@dataclass(frozen=True)
class NodeFacts:
    """Only what placement and the lost-node policy read: GPU labels, GPU allocatable, cordon,
    taints, and the Ready condition's status and last transition (a heartbeat moves neither)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    gpu_allocatable: str | None
    unschedulable: bool
    taints: tuple[tuple[str, str, str], ...]
    ready: str = ""  # "True", "False", "Unknown" (the node controller's: no heartbeat), "" (not reported)
    ready_since: str = ""  # lastTransitionTime of the Ready condition

    def as_object(self) -> dict[str, Any]:
        """The minimal Node dict `gpus.inventory_from_nodes` reads."""
        status: dict[str, Any] = {"allocatable": {GPU_RESOURCE: self.gpu_allocatable}} if self.gpu_allocatable else {}
        if self.ready:
            status["conditions"] = [{"type": "Ready", "status": self.ready, "lastTransitionTime": self.ready_since}]
        return {
            "metadata": {"name": self.name, "labels": dict(self.labels)},
            "spec": {"unschedulable": self.unschedulable,
                     "taints": [{"key": k, "value": v, "effect": e} for k, v, e in self.taints]},
            "status": status,
        }


Child = PodFacts | JobFacts | ConfigMapFacts


# --- projections ------------------------------------------------------------------------------

def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _conditions(raw: Iterable[Mapping[str, Any]] | None, keep: tuple[str, ...] | None = None) -> tuple[ConditionFacts, ...]:
    return tuple(
        ConditionFacts(str(c.get("type") or ""), str(c.get("status") or ""), str(c.get("reason") or ""),
                       str(c.get("message") or ""), str(c.get("lastTransitionTime") or ""))
        for c in raw or () if keep is None or c.get("type") in keep
    )


def _decode(message: str) -> dict[str, Any]:
    try:
        decoded = json.loads(message) if message else {}
    except json.JSONDecodeError:
        return {"message": message}
    return decoded if isinstance(decoded, dict) else {"message": str(decoded)}


def _spec_hash(obj: Mapping[str, Any]) -> str | None:
    value = (_meta(obj).get("annotations") or {}).get(naming.SPEC_HASH_ANNOTATION)
    return str(value) if value else None


def owner_uid(obj: Mapping[str, Any]) -> str | None:
    """The owning FineTuneJob's UID: the controller reference, else our UID label (a Job's pods)."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "FineTuneJob":
            return str(ref.get("uid"))
    label = (_meta(obj).get("labels") or {}).get(naming.UID_LABEL)
    return str(label) if label else None


def pod_facts(obj: Mapping[str, Any]) -> PodFacts:
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    waiting_reason = waiting_message = ""
    termination: TerminationFacts | None = None
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and not waiting_reason:
            waiting_reason, waiting_message = str(waiting.get("reason") or ""), str(waiting.get("message") or "")
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term and termination is None:
            termination = TerminationFacts(term.get("exitCode"), str(term.get("reason") or ""),
                                           _decode(term.get("message") or ""))
    containers = spec.get("containers") or [{}]
    job_uid = labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")
    return PodFacts(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        owner_uid=owner_uid(obj), job_uid=str(job_uid) if job_uid else None,
        component=str(labels.get(naming.COMPONENT_LABEL) or ""), created=str(meta.get("creationTimestamp") or ""),
        deleting=bool(meta.get("deletionTimestamp")), phase=status.get("phase"), node=spec.get("nodeName"),
        image=containers[0].get("image"), waiting_reason=waiting_reason, waiting_message=waiting_message,
        termination=termination, conditions=_conditions(status.get("conditions"), POD_CONDITIONS),
        spec_hash=_spec_hash(obj),
    )


def job_facts(obj: Mapping[str, Any]) -> JobFacts:
    meta, status = _meta(obj), obj.get("status") or {}
    return JobFacts(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        owner_uid=owner_uid(obj), suspend=bool((obj.get("spec") or {}).get("suspend")),
        active=int(status.get("active") or 0), failed=int(status.get("failed") or 0),
        finished=bool(status.get("completionTime")) or any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in status.get("conditions") or []),
        conditions=_conditions(status.get("conditions")), spec_hash=_spec_hash(obj),
    )


def configmap_facts(obj: Mapping[str, Any]) -> ConfigMapFacts:
    meta = _meta(obj)
    raw = (obj.get("data") or {}).get("progress.json")
    progress = _decode(raw) if raw is not None else None
    if progress is not None and "message" in progress and len(progress) == 1:
        progress = {}  # not JSON: ignored, as a trainer mid-write would otherwise blank the status
    return ConfigMapFacts(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        owner_uid=owner_uid(obj), progress=progress,
    )


def node_facts(obj: Mapping[str, Any]) -> NodeFacts:
    meta, spec = _meta(obj), obj.get("spec") or {}
    allocatable = ((obj.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)
    ready: Mapping[str, Any] = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    return NodeFacts(
        name=str(meta.get("name") or ""),
        labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
        gpu_allocatable=str(allocatable) if allocatable is not None else None,
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(sorted((str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
                            for t in spec.get("taints") or [])),
        ready=str(ready.get("status") or ""), ready_since=str(ready.get("lastTransitionTime") or ""),
    )


def project(kind: str, obj: Mapping[str, Any]) -> Child:
    """The projection of a child object of `kind` (Pod, Job or ConfigMap)."""
    if kind == "Pod":
        return pod_facts(obj)
    if kind == "Job":
        return job_facts(obj)
    return configmap_facts(obj)


def ftj_body(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A FineTuneJob as the reconcile reads it: a plain copy without managedFields."""
    body = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "spec", "status")}
    body["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return copy.deepcopy(body)  # managedFields (often the larger part) left out before copying


def ftj_fingerprint(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a FineTuneJob worth a reconcile: spec generation, deletion, labels-free status."""
    meta = _meta(body)
    return (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")),
            json.dumps(body.get("status") or {}, sort_keys=True))


# --- the caches -------------------------------------------------------------------------------

@dataclass
class Children:
    """The children of one FineTuneJob, by kind and name."""

    pods: dict[str, PodFacts] = field(default_factory=dict)
    jobs: dict[str, JobFacts] = field(default_factory=dict)
    configmaps: dict[str, ConfigMapFacts] = field(default_factory=dict)

    def table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {"Pod": self.pods, "Job": self.jobs, "ConfigMap": self.configmaps}
        return tables[kind]

    def empty(self) -> bool:
        return not (self.pods or self.jobs or self.configmaps)


@dataclass(frozen=True)
class Change:
    """What an update changed: whether anything the reconcile reads moved, and for which job."""

    changed: bool
    owner: str | None = None


class WorldCache:
    """FineTuneJobs, their children keyed by owner UID, the GPU node projections, active Jobs."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ftjs: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._children: dict[str, Children] = {}
        self._child_owner: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> owner uid
        self._nodes: dict[str, NodeFacts] = {}
        self._node_objects: list[dict[str, Any]] | None = None
        self._node_index: dict[str, dict[str, Any]] = {}
        self.node_version = 0  # bumped on every node change, so placement inventories are rebuilt once

    # FineTuneJobs
    def put_ftj(self, obj: Mapping[str, Any]) -> bool:
        """Store a FineTuneJob; True when it changed in a way a reconcile reads."""
        meta = _meta(obj)
        key = (str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            old = self._ftjs.get(key)
            if old is not None and old["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
                return False  # the echo of a write already stored: not even copied
        body = ftj_body(obj)
        meta = body["metadata"]
        with self._lock:
            old = self._ftjs.get(key)
            if old is not None and old["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
                return False
            if old is not None and _newer(old["metadata"].get("resourceVersion"), meta.get("resourceVersion")):
                return False  # an event older than our own write-through: keep the newer copy
            self._ftjs[key] = body
            self._uids[str(meta.get("uid"))] = key
            if old is not None and old["metadata"].get("uid") != meta.get("uid"):
                self._uids.pop(str(old["metadata"].get("uid")), None)
            return old is None or ftj_fingerprint(old) != ftj_fingerprint(body)

    def drop_ftj(self, namespace: str, name: str, uid: str | None = None) -> None:
        with self._lock:
            old = self._ftjs.get((namespace, name))
            if old is None or (uid and old["metadata"].get("uid") != uid):
                return
            del self._ftjs[(namespace, name)]
            self._uids.pop(str(old["metadata"].get("uid")), None)

    def ftj(self, key: Key) -> dict[str, Any] | None:
        """A deep copy of the cached FineTuneJob (callers may modify it)."""
        with self._lock:
            body = self._ftjs.get(key)
            return copy.deepcopy(body) if body is not None else None

    def ftj_keys(self, where: Any = None) -> list[Key]:
        """Keys of the cached FineTuneJobs whose status satisfies `where(status)`."""
        with self._lock:
            return [k for k, b in self._ftjs.items() if where is None or where(b.get("status") or {})]

    def states(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for body in self._ftjs.values():
                state = str((body.get("status") or {}).get("state") or "Validating")
                counts[state] = counts.get(state, 0) + 1
            return counts

    def key_of(self, uid: str | None) -> Key | None:
        with self._lock:
            return self._uids.get(uid or "")

    # children
    def put_child(self, kind: str, obj: Mapping[str, Any]) -> Change:
        facts = project(kind, obj)
        return self.put_facts(kind, facts)

    def put_facts(self, kind: str, facts: Child) -> Change:
        ident = (kind, facts.namespace, facts.name)
        with self._lock:
            previous_owner = self._child_owner.get(ident)
            if previous_owner is not None and previous_owner != facts.owner_uid:
                self._remove(ident, previous_owner)
            if facts.owner_uid is None:
                return Change(previous_owner is not None, previous_owner)
            table = self._children.setdefault(facts.owner_uid, Children()).table(kind)
            old = table.get(facts.name)
            table[facts.name] = facts
            self._child_owner[ident] = facts.owner_uid
            return Change(old != facts, facts.owner_uid)

    def drop_child(self, kind: str, namespace: str, name: str, uid: str | None = None) -> Change:
        ident = (kind, namespace, name)
        with self._lock:
            owner = self._child_owner.get(ident)
            if owner is None:
                return Change(False)
            current = self._children.get(owner, Children()).table(kind).get(name)
            if uid and current is not None and current.uid and current.uid != uid:
                return Change(False)  # a successor with the same name is already cached
            self._remove(ident, owner)
            return Change(True, owner)

    def _remove(self, ident: tuple[str, str, str], owner: str) -> None:
        kind, _, name = ident
        self._child_owner.pop(ident, None)
        children = self._children.get(owner)
        if children is not None:
            children.table(kind).pop(name, None)
            if children.empty():
                del self._children[owner]

    def children(self, owner: str) -> Children:
        """A snapshot of one job's children (the facts are immutable; the dicts are copies)."""
        with self._lock:
            found = self._children.get(owner) or Children()
            return Children(dict(found.pods), dict(found.jobs), dict(found.configmaps))

    def child_uids(self, kind: str) -> dict[str, tuple[str, str]]:
        """UID → (namespace, name) of every cached child of `kind` (for the audit relist)."""
        with self._lock:
            out: dict[str, tuple[str, str]] = {}
            for children in self._children.values():
                for facts in children.table(kind).values():
                    out[facts.uid] = (facts.namespace, facts.name)
            return out

    def active_training_jobs(self, namespace: str | None = None) -> int:
        """Training Jobs that hold (or wait for) a GPU: not finished, and running or about to.

        A Job created a moment ago has no active pod yet but counts: in a burst of creates the
        limit must not let every job through before the Job controller catches up.
        """
        with self._lock:
            return sum(1 for children in self._children.values() for job in children.jobs.values()
                       if not job.finished and (job.active or not job.suspend)
                       and (namespace is None or job.namespace == namespace))

    # nodes
    def put_node(self, obj: Mapping[str, Any]) -> bool:
        facts = node_facts(obj)
        with self._lock:
            if self._nodes.get(facts.name) == facts:
                return False
            self._nodes[facts.name] = facts
            self._node_objects = None
            self.node_version += 1
            return True

    def drop_node(self, name: str) -> bool:
        with self._lock:
            if self._nodes.pop(name, None) is None:
                return False
            self._node_objects = None
            self.node_version += 1
            return True

    def node_names(self) -> set[str]:
        with self._lock:
            return set(self._nodes)

    def nodes(self) -> list[dict[str, Any]]:
        """The minimal Node dicts placement reads, rebuilt only after a node change."""
        with self._lock:
            if self._node_objects is None:
                self._node_objects = [self._nodes[n].as_object() for n in sorted(self._nodes)]
                self._node_index = {n["metadata"]["name"]: n for n in self._node_objects}
            return self._node_objects

    def nodes_by_name(self) -> dict[str, dict[str, Any]]:
        """The dicts of `nodes()` by name, rebuilt with them."""
        with self._lock:
            self.nodes()
            return self._node_index

    def node_product(self, name: str | None) -> str | None:
        with self._lock:
            facts = self._nodes.get(name or "")
            return dict(facts.labels).get("nvidia.com/gpu.product") if facts else None


def _newer(a: Any, b: Any) -> bool:
    """Is resourceVersion `a` newer than `b`? Only comparable as integers (etcd revisions)."""
    try:
        return int(a) > int(b)
    except (TypeError, ValueError):
        return False
