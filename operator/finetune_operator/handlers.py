"""The only module that uses kopf's decorators; every handler is a few lines over `controller`.

All handlers are level-triggered (`on.event` plus one resync thread): kopf keeps no per-handler progress for
them, so nothing about a job lives in the operator's memory or in kopf's annotations, and a
replica that becomes leader simply reconciles what it finds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import kopf

from finetune_operator import api, controller, naming, observability
from finetune_operator.config import OperatorConfig
from finetune_operator.leader import LeaderElector

log = logging.getLogger(__name__)


class Runtime:
    """Process-wide state set at start-up."""

    config: OperatorConfig = OperatorConfig()
    elector: LeaderElector | None = None
    node_fingerprints: dict[str, str] = {}


def _leading() -> bool:
    return Runtime.elector is not None and Runtime.elector.is_leader()


def _managed(labels: dict[str, str], **_: Any) -> bool:
    return labels.get("app.kubernetes.io/managed-by") == naming.MANAGED_BY and naming.JOB_LABEL in labels


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping goes to annotations: the status schema is precise and ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.finetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.finetune.dev")
    settings.posting.enabled = False  # we emit our own, meaningful Events
    # Watches that silently stop are a known kopf failure mode: bound every watch request.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    config = Runtime.config
    Runtime.elector = LeaderElector(config.lease_name, config.lease_namespace, config.identity,
                                    config.lease_duration_seconds)
    Runtime.elector.start()
    threading.Thread(target=_resync_loop, name="resync", daemon=True).start()


def _resync_loop() -> None:
    """Reconcile every unfinished job periodically, and refresh the state gauge.

    A safety net for missed events and the way a newly elected leader picks up its work. It
    runs in one thread rather than as kopf per-object timers: kopf guards timers with a
    finalizer on each FineTuneJob, which would need write access to users' resources.
    """
    while True:
        time.sleep(Runtime.config.resync_seconds)
        if not _leading():
            continue
        try:
            controller.resync_all(Runtime.config)
            controller.update_state_gauge(Runtime.config)
        except Exception as exc:  # noqa: BLE001 - one failed pass must not stop the loop
            log.warning("resync: %s", exc)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if Runtime.elector is not None:
        Runtime.elector.stop()


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def finetunejob_event(type: str | None, name: str, namespace: str, **_: Any) -> None:
    if type != "DELETED" and _leading():
        controller.reconcile_job(namespace, name, Runtime.config)


@kopf.on.event("batch", "v1", "jobs", when=_managed)
@kopf.on.event("", "v1", "pods", when=_managed)
@kopf.on.event("", "v1", "configmaps", when=_managed)
def child_event(labels: dict[str, str], namespace: str, **_: Any) -> None:
    if _leading():
        controller.reconcile_job(namespace, labels[naming.JOB_LABEL], Runtime.config)


def _fingerprint(body: Any) -> str:
    # Only what placement reads: heartbeats (status.conditions) must not re-evaluate jobs.
    meta = body.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if "gpu" in k or "accelerator" in k}
    allocatable = (body.get("status") or {}).get("allocatable") or {}
    spec = body.get("spec") or {}
    material = {"labels": labels, "allocatable": allocatable, "taints": spec.get("taints"),
                "unschedulable": spec.get("unschedulable")}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@kopf.on.event("", "v1", "nodes")
def node_event(type: str | None, name: str, body: Any, **_: Any) -> None:
    fingerprint = "" if type == "DELETED" else _fingerprint(body)
    if Runtime.node_fingerprints.get(name) == fingerprint:
        return
    Runtime.node_fingerprints[name] = fingerprint
    if _leading():
        controller.reevaluate_waiting(Runtime.config)


@kopf.on.event("coordination.k8s.io", "v1", "leases",
               when=lambda name, namespace, **_: name == Runtime.config.lease_name
               and namespace == Runtime.config.lease_namespace)
def lease_event(**_: Any) -> None:
    observability.HEARTBEAT.beat()


@kopf.on.probe(id="watchAgeSeconds")
def watch_age(**_: Any) -> float:
    age = observability.HEARTBEAT.age()
    limit = 4 * Runtime.config.lease_duration_seconds
    if age > limit:
        raise kopf.PermanentError(f"no watch event for {age:.0f}s (limit {limit}s): the watch stream is stale")
    return round(age, 1)


@kopf.on.probe(id="leader")
def leader_probe(**_: Any) -> bool:
    return _leading()
