"""The watch caches' projections: only what the reconcile reads, keyed by the owner's UID."""

from __future__ import annotations

import copy
import json
from typing import Any

from finetune_operator import cache, naming

OWNER = "0f9c1d2e-aaaa-bbbb-cccc-1234567890ab"


def owned(kind: str, name: str, uid: str, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": kind, "metadata": {
        "name": name, "namespace": "team-a", "uid": uid, "resourceVersion": "1",
        "labels": {"app.kubernetes.io/managed-by": naming.MANAGED_BY, naming.UID_LABEL: OWNER},
        "ownerReferences": [{"kind": "FineTuneJob", "uid": OWNER, "controller": True, "name": "x"}],
        "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}],
    }}
    obj.update(extra)
    return obj


NODE = {"metadata": {"name": "gpu-0", "resourceVersion": "1",
                     "labels": {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.count": "1"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": "1", "cpu": "8"},
                   "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}}


def test_node_heartbeats_are_not_changes() -> None:
    world = cache.WorldCache()
    assert world.put_node(NODE)
    beat = copy.deepcopy(NODE)
    beat["metadata"]["resourceVersion"] = "2"
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:10Z"
    beat["status"]["allocatable"]["cpu"] = "7"  # placement reads only GPUs
    assert not world.put_node(beat)
    cordoned = copy.deepcopy(beat)
    cordoned["spec"]["unschedulable"] = True
    assert world.put_node(cordoned)
    assert world.nodes() == [{"metadata": {"name": "gpu-0", "labels": NODE["metadata"]["labels"]},
                              "spec": {"unschedulable": True,
                                       "taints": [{"key": "nvidia.com/gpu", "value": "", "effect": "NoSchedule"}]},
                              "status": {"allocatable": {"nvidia.com/gpu": "1"},
                                         "conditions": [{"type": "Ready", "status": "True",
                                                         "lastTransitionTime": ""}]}}]
    assert world.node_product("gpu-0") == "Tesla-T4"
    # The node controller marking the node Unknown (no heartbeat) is a change the lost-node policy reads.
    lost = copy.deepcopy(cordoned)
    lost["status"]["conditions"][0].update(status="Unknown", lastTransitionTime="2026-01-01T00:01:00Z")
    assert world.put_node(lost)
    assert world.nodes()[0]["status"]["conditions"] == [
        {"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:01:00Z"}]
    assert world.nodes_by_name()["gpu-0"]["spec"]["unschedulable"] is True  # rebuilt with the list
    assert world.drop_node("gpu-0") and world.nodes() == [] and world.nodes_by_name() == {}


def test_pod_projection_keeps_only_what_the_decision_reads() -> None:
    pod = owned("Pod", "j-train-abc", "p1", spec={"nodeName": "gpu-0", "containers": [
        {"name": "trainer", "image": "img:1", "env": [{"name": "X", "value": "y" * 1000}]}]},
        status={"phase": "Failed", "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "m"}],
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": 3, "reason": "Error", "message": json.dumps({"class": "DataError", "message": "bad"})}}}]})
    pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "job-uid"
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "job-uid", "controller": True}]
    facts = cache.pod_facts(pod)
    assert facts.owner_uid == OWNER  # a Job's pod finds its FineTuneJob through the UID label
    assert facts.job_uid == "job-uid" and facts.phase == "Failed" and facts.image == "img:1"
    assert facts.termination == cache.TerminationFacts(3, "Error", {"class": "DataError", "message": "bad"})
    assert [c.type for c in facts.conditions] == ["DisruptionTarget"]
    assert "env" not in repr(facts)


def test_children_are_found_by_owner_uid_never_by_a_cut_name() -> None:
    world = cache.WorldCache()
    long_a, long_b = "a" * 70 + "-one", "a" * 70 + "-two"  # same first 63 characters
    for name, uid in ((long_a, OWNER), (long_b, "other-uid")):
        world.put_ftj({"metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": "1",
                                    "generation": 1}, "spec": {}})
    job = owned("Job", naming.training_job(long_a), "j1", spec={"suspend": False},
                status={"active": 1, "conditions": []})
    change = world.put_child("Job", job)
    assert change == cache.Change(True, OWNER)
    assert world.key_of(change.owner) == ("team-a", long_a)
    assert set(world.children(OWNER).jobs) == {naming.training_job(long_a)}
    assert world.children("other-uid").empty()
    assert world.active_training_jobs() == 1
    assert world.put_child("Job", job) == cache.Change(False, OWNER)  # nothing the reconcile reads moved


def test_a_deleted_child_leaves_and_a_successor_with_the_same_name_is_kept() -> None:
    world = cache.WorldCache()
    world.put_child("Pod", owned("Pod", "x-inspect", "old-uid", status={"phase": "Succeeded"}))
    world.put_child("Pod", owned("Pod", "x-inspect", "new-uid", status={"phase": "Pending"}))
    assert world.drop_child("Pod", "team-a", "x-inspect", "old-uid").changed is False  # late DELETED of the old one
    assert world.children(OWNER).pods["x-inspect"].uid == "new-uid"
    assert world.drop_child("Pod", "team-a", "x-inspect", "new-uid") == cache.Change(True, OWNER)
    assert world.children(OWNER).empty() and world.child_uids("Pod") == {}


def test_progress_configmap_is_decoded_once() -> None:
    cm = owned("ConfigMap", "x-progress", "c1", data={"progress.json": json.dumps({"step": 3, "totalSteps": 10})})
    assert cache.configmap_facts(cm).progress == {"step": 3, "totalSteps": 10}
    cm["data"]["progress.json"] = "{half-writ"
    assert cache.configmap_facts(cm).progress == {}


def test_own_status_write_echo_and_stale_events_do_not_count_as_changes() -> None:
    world = cache.WorldCache()
    body = {"metadata": {"name": "x", "namespace": "team-a", "uid": OWNER, "resourceVersion": "10", "generation": 1,
                         "managedFields": [{"manager": "kubectl"}]}, "spec": {"a": 1}}
    assert world.put_ftj(body)
    assert "managedFields" not in (world.ftj(("team-a", "x")) or {})["metadata"]
    written = copy.deepcopy(body)
    written["metadata"]["resourceVersion"] = "11"
    written["status"] = {"state": "Inspecting"}
    assert world.put_ftj(written)  # the write-through of our own status write
    assert not world.put_ftj(written)  # its watch event: same resourceVersion, no reconcile
    assert not world.put_ftj(body)  # an older event arriving late never rolls the cache back
    assert (world.ftj(("team-a", "x")) or {})["status"] == {"state": "Inspecting"}
    relabelled = copy.deepcopy(written)
    relabelled["metadata"]["resourceVersion"] = "12"
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert not world.put_ftj(relabelled)  # metadata-only edits do not need a reconcile
    bumped = copy.deepcopy(relabelled)
    bumped["metadata"].update(resourceVersion="13", generation=2)
    assert world.put_ftj(bumped)
    assert world.states() == {"Inspecting": 1}


def test_long_job_names_give_valid_distinct_label_values() -> None:
    import re

    valid = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    cut_on_dash = "a" * 62 + "-b"  # the old cut to 63 characters ended in "-"
    twins = ("x" * 70 + "-one", "x" * 70 + "-two")
    values = [naming.label_value(n) for n in (cut_on_dash, *twins)]
    assert all(len(v) <= 63 and valid.match(v) for v in values)
    assert len(set(values)) == 3
    assert naming.label_value("short-name") == "short-name"
