"""The middle tier: `k8s.ensure`'s 409 path and the controller's waiting paths on the real API server.

A 409 on create means "adopt if it is ours": the existing object is returned when its controller
is the owner asking, and refused (ForeignObject, never adopted, never replaced) when it belongs to
someone else. The controller reports that refusal as Scheduled/WaitingForPredecessor and carries
on once the other owner's object is gone; a job that fits no GPU waits Queued
(Scheduled/WaitingForCapacity) until a node that fits appears. Conditions are read by type.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.config import kube_config

from finetune_operator import conditions, k8s, naming
from localcluster import nodes
from localcluster.fleet import Gpu, NodeSpec
from localcluster.operator_runner import CLUSTER_ROLE_FILE
from localcluster.waiting import until
from operator_env import Jobs, assets, crd, job_namespace, jobs, manifest, s3_client, start_operator, unique  # noqa: F401 - fixtures


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


@pytest.fixture
def operator_client(service_account_kubeconfig: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`finetune_operator.k8s` in this process, talking to the cluster as the operator's ServiceAccount."""
    # The client reads $KUBECONFIG when it is imported: point its default location at ours instead.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(service_account_kubeconfig(CLUSTER_ROLE_FILE)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster path
    monkeypatch.setattr(k8s, "_configured", False)
    monkeypatch.setattr(k8s, "_local", threading.local())
    default = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(default)  # configure() replaced the process-wide default


def _owner(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """A real object to own children (garbage collection deletes children whose owner is gone)."""
    cm = core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": cm.metadata.uid, "controller": True,
            "blockOwnerDeletion": True}


def _child(namespace: str, name: str, owner: dict[str, Any] | None, value: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"value": value}}


def test_ensure_creates_adopts_its_own_and_refuses_a_foreign_object(
    operator_client: None, k8s_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(k8s_api)
    ours, theirs = _owner(core, namespace, "owner-a"), _owner(core, namespace, "owner-b")

    created = k8s.ensure(_child(namespace, "child", ours, "first"), ours["uid"])
    assert naming.controller_uid(created) == ours["uid"]
    # The same create again is a 409: the existing object is adopted as it is, not replaced.
    again = k8s.ensure(_child(namespace, "child", ours, "second"), ours["uid"])
    assert again["metadata"]["uid"] == created["metadata"]["uid"] and again["data"] == {"value": "first"}

    with pytest.raises(k8s.ForeignObject) as foreign:
        k8s.ensure(_child(namespace, "child", theirs, "other"), theirs["uid"])
    assert f"ConfigMap {namespace}/child belongs to another owner (uid {ours['uid']})" in str(foreign.value)
    # An object nobody controls (made by hand) is not ours either.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "by-hand"}})
    with pytest.raises(k8s.ForeignObject, match="belongs to another owner"):
        k8s.ensure(_child(namespace, "by-hand", ours, "x"), ours["uid"])

    stored = core.read_namespaced_config_map("child", namespace)
    assert stored.metadata.uid == created["metadata"]["uid"] and stored.data == {"value": "first"}
    assert [r.uid for r in stored.metadata.owner_references] == [ours["uid"]]
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items
            if c.metadata.name.startswith(("child", "by-hand"))] == ["by-hand", "child"]


def test_a_predecessors_child_is_reported_not_adopted_and_the_job_goes_on_once_it_is_gone(
    jobs: Jobs, start_operator: Any
) -> None:
    start_operator()
    name = unique("squat")
    squatted = naming.inspection_pod(name)
    predecessor = _owner(jobs.core, jobs.namespace, f"{name}-predecessor")
    # the predecessor's pod holds the name; it is never scheduled (no node has the label)
    jobs.core.create_namespaced_pod(jobs.namespace, {
        "metadata": {"name": squatted, "ownerReferences": [predecessor], "annotations": {"who": "predecessor"}},
        "spec": {"nodeSelector": {"finetune.test/nowhere": "true"},
                 "containers": [{"name": "c", "image": "ghcr.io/finetune-operator/predecessor:never"}]}})
    jobs.create(manifest(name))

    body = jobs.wait(name, lambda b: _condition(b, conditions.SCHEDULED).get("reason") == conditions.WAITING_FOR_PREDECESSOR,
                     120, "Scheduled/WaitingForPredecessor")
    message = _condition(body, conditions.SCHEDULED)["message"]
    assert f"Pod {jobs.namespace}/{squatted} belongs to another owner (uid {predecessor['uid']})" in message
    kept = jobs.core.read_namespaced_pod(squatted, jobs.namespace)
    assert kept.metadata.annotations == {"who": "predecessor"}
    assert [r.uid for r in kept.metadata.owner_references] == [predecessor["uid"]]
    assert jobs.pods(f"finetune.dev/job={name}") == []

    # The predecessor goes; garbage collection removes its child; the next pass creates ours.
    jobs.core.delete_namespaced_config_map(predecessor["name"], jobs.namespace,
                                           body=client.V1DeleteOptions(propagation_policy="Foreground"))
    uid = jobs.get(name)["metadata"]["uid"]
    until(lambda: _owned_by(jobs, squatted, uid), 120, f"{squatted} recreated for the job")
    jobs.wait(name, lambda b: _condition(b, conditions.SCHEDULED).get("reason") != conditions.WAITING_FOR_PREDECESSOR,
              120, "the waiting condition cleared")
    jobs.delete(name)


def _owned_by(jobs: Jobs, name: str, uid: str) -> bool:
    try:
        pod = jobs.core.read_namespaced_pod(name, jobs.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.controller and r.uid == uid for r in pod.metadata.owner_references or [])


def test_a_job_waits_for_capacity_and_is_placed_when_a_node_that_fits_appears(
    jobs: Jobs, start_operator: Any, k8s_api: client.ApiClient
) -> None:
    start_operator()
    name = unique("wait-cap")
    # Two GPUs on one node: no node of the fleet has them.
    jobs.create(manifest(name, resources={"gpus": 2, "memory": "6Gi"},
                         runPolicy={"backoffLimit": 2, "waitForCapacity": True}))
    body = jobs.wait(name, lambda b: _condition(b, conditions.SCHEDULED).get("reason") == "WaitingForCapacity",
                     300, "Scheduled/WaitingForCapacity")
    status = body["status"]
    assert status["state"] == conditions.QUEUED and not status.get("jobName")
    assert _condition(body, conditions.SCHEDULED)["status"] == "False"
    assert "2 GPUs" in _condition(body, conditions.SCHEDULED)["message"]
    assert jobs.training_jobs() == []

    node = NodeSpec(name=f"{name}-l4x2", gpu=Gpu("NVIDIA-L4", 23034, 2, 8, 9, "ada-lovelace"),
                    # no pod but a GPU job's lands here, and nothing runs what does
                    taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    nodes.register(k8s_api, [node], kubelet_port=10250)
    try:
        placed = jobs.wait(name, lambda b: bool((b.get("status") or {}).get("jobName")), 120,
                           "a training Job once the node appeared")
        assert _condition(placed, conditions.SCHEDULED).get("reason") != "WaitingForCapacity"
        assert placed["status"]["placement"]["eligibleProducts"] == ["NVIDIA-L4"]
        (job,) = jobs.training_jobs()
        assert job.metadata.name == placed["status"]["jobName"]
    finally:
        jobs.delete(name)
        client.CoreV1Api(k8s_api).delete_node(node.name)
