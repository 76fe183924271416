"""One reconcile of one FineTuneJob: observe through `k8s`, decide with `reconcile`, act through `k8s`.

Get → build desired objects → create-or-adopt → compute status → patch status only if it changed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from finetune_operator import k8s, naming, observability, reconcile
from finetune_operator.config import OperatorConfig

log = logging.getLogger(__name__)
COMPONENT = "finetune-operator"

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    # FineTuneJob events, child events and timers run concurrently; one reconcile per job at a time.
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def observe(body: dict[str, Any], config: OperatorConfig) -> reconcile.Observed:
    """Read everything the decision depends on."""
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]

    def owned(obj: dict[str, Any] | None) -> dict[str, Any] | None:
        # A child of a deleted predecessor with the same name is not ours.
        return obj if obj is not None and naming.controller_uid(obj) == uid else None

    obs = reconcile.Observed(body=body)
    obs.inspect_config = owned(k8s.get_object("ConfigMap", ns, naming.inspect_config(name)))
    obs.trainer_config = owned(k8s.get_object("ConfigMap", ns, naming.trainer_config(name)))
    obs.job = owned(k8s.get_object("Job", ns, naming.training_job(name)))
    if obs.job is None:
        obs.inspect_pod = owned(k8s.get_object("Pod", ns, naming.inspection_pod(name)))
        obs.nodes = k8s.list_nodes()
        if config.max_concurrent_jobs:
            selector = f"app.kubernetes.io/managed-by={naming.MANAGED_BY},{naming.COMPONENT_LABEL}=training"
            obs.active_jobs = sum(
                1 for j in k8s.list_objects("Job", None if not config.namespaces else ns, selector)
                if not (j.get("status") or {}).get("completionTime") and (j.get("status") or {}).get("active")
            )
    else:
        job_uid = obs.job["metadata"]["uid"]
        obs.pods = [p for p in k8s.list_objects("Pod", ns, f"batch.kubernetes.io/controller-uid={job_uid}")]
        obs.nodes = k8s.list_nodes()
        progress_cm = owned(k8s.get_object("ConfigMap", ns, naming.progress(name)))
        raw = ((progress_cm or {}).get("data") or {}).get("progress.json") or "{}"
        try:
            parsed = json.loads(raw)
            obs.progress = parsed if isinstance(parsed, dict) else {}
        except json.JSONDecodeError:
            log.warning("progress of %s/%s is not JSON; ignored", ns, name)
    return obs


def reconcile_job(namespace: str, name: str, config: OperatorConfig) -> None:
    """Bring one FineTuneJob one step closer to its desired state."""
    with _lock(namespace, name):
        started = time.monotonic()
        try:
            _reconcile(namespace, name, config)
        finally:
            observability.RECONCILE_SECONDS.observe(time.monotonic() - started)


def _reconcile(namespace: str, name: str, config: OperatorConfig) -> None:
    body = k8s.get_ftj(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return  # deleting: garbage collection removes the children; S3 is never touched
    if (body.get("status") or {}).get("state") in reconcile.TERMINAL:
        return  # finished jobs cost one GET per resync, not a full observation
    obs = observe(body, config)
    plan = reconcile.plan(obs, config)
    uid = body["metadata"]["uid"]
    for obj in plan.ensure:
        try:
            k8s.ensure(obj, uid)
        except k8s.ForeignObject as exc:
            # A predecessor's child still holds the name; report and retry on the next pass.
            plan.status["conditions"] = _waiting(plan.status, str(exc), body)
            break
    if plan.job_suspend is not None and obs.job is not None:
        k8s.patch_object("Job", namespace, obs.job["metadata"]["name"], {"spec": {"suspend": plan.job_suspend}})
    if plan.delete_job and obs.job is not None:
        k8s.delete_object("Job", namespace, obs.job["metadata"]["name"], obs.job["metadata"]["uid"])
    old = body.get("status") or {}
    if plan.status != old:
        try:
            k8s.patch_ftj_status(namespace, name, _merge_patch(old, plan.status), body["metadata"].get("resourceVersion"))
        except k8s.ApiError as exc:
            if exc.status == 409:
                return  # the object moved; the next event reconciles from fresh state
            raise
        for type_, reason, message in plan.events:
            k8s.emit_event(body, type_, reason, message, COMPONENT)
            if type_ == "Warning" or reason in reconcile.TERMINAL:
                log.info("%s/%s: %s %s", namespace, name, reason, message)
        if plan.status.get("state") != old.get("state"):
            observability.TRANSITIONS.labels(state=str(plan.status.get("state"))).inc()
            if plan.status.get("state") == "Failed":
                reason = str((plan.status.get("failure") or {}).get("reason", "Failed"))
                if reason in ("InvalidSpec", "Unschedulable", "DataError"):
                    observability.VALIDATION_FAILURES.labels(reason=reason).inc()


def _waiting(status: dict[str, Any], message: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    from finetune_operator import conditions as cond

    return cond.set_condition(status.get("conditions"), cond.SCHEDULED, None, "WaitingForPredecessor",
                              message, int(body["metadata"].get("generation") or 1))


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (removed keys become null)."""
    patch: dict[str, Any] = {}
    for key in set(old) | set(new):
        if key not in new:
            patch[key] = None
        elif isinstance(new[key], dict) and isinstance(old.get(key), dict):
            sub = _merge_patch(old[key], new[key])
            if sub:
                patch[key] = sub
        elif new[key] != old.get(key):
            patch[key] = new[key]
    return patch


def update_state_gauge(config: OperatorConfig) -> None:
    """Refresh the jobs-by-state gauge from the API server."""
    counts: dict[str, int] = {}
    namespaces: list[str | None] = list(config.namespaces) or [None]
    for ns in namespaces:
        for item in k8s.list_ftjs(ns):
            state = (item.get("status") or {}).get("state") or "Validating"
            counts[state] = counts.get(state, 0) + 1
    for state in ("Validating", "Inspecting", "Queued", "Running", "Succeeded", "Failed", "Suspended"):
        observability.JOBS_BY_STATE.labels(state=state).set(counts.get(state, 0))


def resync_all(config: OperatorConfig) -> None:
    """Reconcile every job that has not finished."""
    namespaces: list[str | None] = list(config.namespaces) or [None]
    for ns in namespaces:
        for item in k8s.list_ftjs(ns):
            if (item.get("status") or {}).get("state") not in reconcile.TERMINAL:
                meta = item["metadata"]
                try:
                    reconcile_job(meta["namespace"], meta["name"], config)
                except k8s.ApiError as exc:
                    log.warning("reconcile %s/%s: %s", meta["namespace"], meta["name"], exc)


def reevaluate_waiting(config: OperatorConfig) -> None:
    """The GPU inventory changed: reconcile every job waiting for capacity."""
    namespaces: list[str | None] = list(config.namespaces) or [None]
    for ns in namespaces:
        for item in k8s.list_ftjs(ns):
            if (item.get("status") or {}).get("state") == "Queued" and not (item.get("status") or {}).get("jobName"):
                meta = item["metadata"]
                reconcile_job(meta["namespace"], meta["name"], config)
