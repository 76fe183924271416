"""The lost-node policy: a training pod stuck on a node that stopped reporting is force-deleted
after the configured time, counted as a disruption (never a failure), and said in words.

The node's Ready condition comes from the watch cache's node projection (cache.node_facts),
as in the operator; no API server.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from finetune_operator import builders, cache, reconcile
from finetune_operator import controller as controller_mod
from finetune_operator import k8s
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

CONFIG = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"},
                                        "node_lost_force_delete_seconds": 90})
LOST_AT = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)


def node(name: str, ready: str, since: datetime = LOST_AT) -> dict[str, Any]:
    """A Node as the watch delivers it, through the cache's projection."""
    return cache.node_facts({
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.count": "1"}},
        "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "lastHeartbeatTime": "2026-01-01T00:09:30Z"}]},
    }).as_object()


def pod(name: str, node_name: str, *, phase: str = "Running", created: str = "2026-01-01T00:00:00Z",
        deleting: bool = False, conditions: list[dict[str, Any]] | None = None) -> cache.PodFacts:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:30Z"
    return cache.pod_facts({"metadata": meta,
                            "spec": {"nodeName": node_name, "containers": [{"name": "trainer", "image": "img"}]},
                            "status": {"phase": phase, "conditions": conditions or [],
                                       "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}})


def observed(body: dict[str, Any], pods: list[cache.PodFacts], nodes: list[dict[str, Any]],
             failed: int = 0) -> reconcile.Observed:
    job = cache.job_facts({"metadata": {"name": "llama-chat-train", "uid": "j1"}, "spec": {"suspend": False},
                           "status": {"active": 1, "failed": failed}})
    return reconcile.Observed(body=body, job=job, pods=pods, nodes=nodes,
                              progress={"step": 8, "totalSteps": 20, "lastCheckpoint": {"step": 8, "uri": "s3://x/"}})


EVICTED = [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": "2026-01-01T00:10:30Z"}]


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_as_a_disruption(body: dict[str, Any]) -> None:
    pods = [pod("train-a", "gpu-0", deleting=True, conditions=EVICTED)]
    nodes = [node("gpu-0", "Unknown"), node("gpu-1", "True")]
    early = reconcile.plan(observed(body, pods, nodes), CONFIG, now=LOST_AT + timedelta(seconds=89))
    assert early.force_delete_pods == []
    assert early.status_data()["lastDisruption"]["reason"] == "DeletionByTaintManager"  # evicted, still stuck

    plan = reconcile.plan(observed(body, pods, nodes), CONFIG, now=LOST_AT + timedelta(seconds=95))
    assert plan.force_delete_pods == [("train-a", "uid-train-a")]
    status = plan.status_data()
    assert status["state"] != "Failed" and "failure" not in status
    assert status["disruptions"] == 1
    last = status["lastDisruption"]
    assert last["reason"] == "NodeLost" and last["pod"] == "train-a"
    for words in ("node gpu-0 has not been Ready for 95s", "force-deleted", "resumes from checkpoint step 8",
                  "fenced off"):
        assert words in last["message"]
    assert [(t, r) for t, r, _ in plan.events if t == "Warning"] == [("Warning", "NodeLost")]
    assert status["state"] == "Queued"  # waiting for the replacement, not "Running" on a lost node


def test_the_release_is_repeated_until_the_pod_is_gone_but_told_and_counted_once(body: dict[str, Any]) -> None:
    nodes = [node("gpu-0", "False")]
    now = LOST_AT + timedelta(minutes=5)
    evicted = pod("train-a", "gpu-0", deleting=True, conditions=EVICTED)
    # The taint manager's eviction is seen first (one disruption), then the release: still one.
    tolerated = reconcile.plan(observed(body, [evicted], nodes), CONFIG, now=LOST_AT + timedelta(seconds=30))
    assert tolerated.force_delete_pods == []
    assert tolerated.status_data()["lastDisruption"]["reason"] == "DeletionByTaintManager"
    body["status"] = tolerated.status_data()
    first = reconcile.plan(observed(body, [evicted], nodes), CONFIG, now=now)
    assert first.status_data()["lastDisruption"]["reason"] == "NodeLost"
    body["status"] = first.status_data()
    again = reconcile.plan(observed(body, [evicted], nodes), CONFIG, now=now + timedelta(seconds=10))
    assert again.force_delete_pods == [("train-a", "uid-train-a")]
    assert again.events == []  # said once, in the first pass
    assert again.status_data()["disruptions"] == 1
    assert again.status_data()["lastDisruption"]["reason"] == "NodeLost"
    body["status"] = again.status_data()
    # The Job's replacement runs on a healthy node: one more attempt, no more disruptions.
    replaced = reconcile.plan(observed(body, [pod("train-b", "gpu-1", created="2026-01-01T00:16:00Z")],
                                      [*nodes, node("gpu-1", "True")]), CONFIG, now=now + timedelta(seconds=30))
    status = replaced.status_data()
    assert replaced.force_delete_pods == []
    assert (status["state"], status["attempts"], status["disruptions"]) == ("Running", 2, 1)


@pytest.mark.parametrize("case", ["ready", "policy-off", "finished-pod", "unknown-node", "still-tolerated"])
def test_nothing_is_deleted_without_a_lost_node_and_the_policy(body: dict[str, Any], case: str) -> None:
    config = CONFIG.model_copy(update={"node_lost_force_delete_seconds": 0}) if case == "policy-off" else CONFIG
    nodes = [node("gpu-0", "True" if case == "ready" else "Unknown")]
    # still-tolerated: not evicted yet (e.g. the job tolerates unreachable for longer): its choice stands
    target = pod("train-a", "gpu-9" if case == "unknown-node" else "gpu-0",
                 phase="Succeeded" if case == "finished-pod" else "Running", deleting=case != "still-tolerated",
                 conditions=EVICTED)
    plan = reconcile.plan(observed(body, [target], nodes), config, now=LOST_AT + timedelta(hours=1))
    assert plan.force_delete_pods == []


def test_the_controller_marks_the_pod_failed_then_force_deletes_it(body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    deletes: list[tuple[Any, ...]] = []
    monkeypatch.setattr(k8s, "delete_object", lambda *a, **kw: deletes.append((*a, kw)))
    monkeypatch.setattr(k8s, "fail_pod", lambda *a: deletes.append(("fail", *a[:3])))
    monkeypatch.setattr(k8s, "patch_ftj_status", lambda ns, name, status, rv: {**copy.deepcopy(body), "status": status})
    monkeypatch.setattr(k8s, "emit_event", lambda *a: None)
    ctl = controller_mod.Controller(CONFIG)
    ctl.synced.set()
    plan = reconcile.plan(observed(body, [pod("train-a", "gpu-0", deleting=True)], [node("gpu-0", "Unknown")]), CONFIG,
                          now=LOST_AT + timedelta(minutes=5))
    monkeypatch.setattr(reconcile, "plan", lambda obs, config: plan)
    ctl.cache.put_ftj(body)
    ctl.process(("team-a", "llama-chat"))
    # Failed first (the Job waits for a terminal phase), then gone without waiting for a kubelet.
    assert deletes == [("fail", "team-a", "train-a", "uid-train-a"),
                       ("Pod", "team-a", "train-a", "uid-train-a", {"grace_seconds": 0})]


def test_training_pods_tolerate_a_lost_node_for_the_configured_time(body: dict[str, Any]) -> None:
    config = CONFIG.model_copy(update={"node_lost_toleration_seconds": 30})
    spec = FineTuneJobSpec.model_validate(body["spec"])
    pod_spec = builders.training_job({**body}, spec, config, None, {})["spec"]["template"]["spec"]
    lost = {t["key"]: t for t in pod_spec["tolerations"] if t.get("effect") == "NoExecute"}
    assert lost == {key: {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
                    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")}
    attempt = next(e for e in pod_spec["containers"][0]["env"] if e["name"] == builders.ATTEMPT_ENV)
    assert attempt["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    # A job's own toleration for the same taint wins over the operator's default.
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
           "tolerationSeconds": 600}
    spec = FineTuneJobSpec.model_validate({**body["spec"], "resources": {**body["spec"]["resources"],
                                                                          "tolerations": [own]}})
    pod_spec = builders.training_job({**body}, spec, config, None, {})["spec"]["template"]["spec"]
    assert [t.get("tolerationSeconds") for t in pod_spec["tolerations"]
            if t["key"] == "node.kubernetes.io/unreachable"] == [600]


def test_a_disruption_whose_pod_came_and_went_unseen_is_still_counted(body: dict[str, Any]) -> None:
    """A deleted pod can vanish between two reconciles; the Job's failed count tells the rest."""
    nodes = [node("gpu-1", "True")]
    first = reconcile.plan(observed(body, [pod("train-a", "gpu-1")], nodes), CONFIG)
    body["status"] = first.status_data()
    # train-b ran and was deleted unseen; train-c runs. The Job counted one failure (train-a's).
    later = reconcile.plan(observed(body, [pod("train-b", "gpu-1", created="2026-01-01T00:05:00Z"),
                                           pod("train-c", "gpu-1", created="2026-01-01T00:06:00Z")], nodes,
                                    failed=1), CONFIG)
    status = later.status_data()
    assert (status["attempts"], status["disruptions"]) == (3, 1)
