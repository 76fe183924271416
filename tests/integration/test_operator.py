"""The operator on the real control plane, S3 and pod runner, under its own RBAC.

Each test has its own namespace and its own operator process(es) watching only that namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from finetune_operator import estimate
from localcluster.waiting import until

from operator_env import (  # noqa: F401 - fixtures
    BAD_DATA, BUCKET, SHAPE_70B, Jobs, assets, crd, ignore_404, job_namespace, jobs, manifest, s3_client, s3_keys,
    start_operator, unique,
)


def _conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def test_happy_path_trains_and_reports(jobs: Jobs, start_operator: Any, s3_client: Any) -> None:
    op = start_operator()
    name = unique("happy")
    created = jobs.create(manifest(name))
    uid = created["metadata"]["uid"]
    seen: dict[str, Any] = {"states": [], "progress": None}

    def record(body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        if status.get("state") and (not seen["states"] or seen["states"][-1] != status["state"]):
            seen["states"].append(status["state"])
        if status.get("state") == "Running" and (status.get("progress") or {}).get("step") is not None:
            seen["progress"] = status["progress"]

    body = jobs.wait_state(name, "Succeeded", timeout=600, on_poll=record)
    status = body["status"]
    assert seen["states"][0] in ("Validating", "Inspecting")
    assert "Inspecting" in seen["states"] and "Succeeded" == seen["states"][-1]
    assert seen["progress"] is not None, f"no progress observed while running (states {seen['states']})"
    assert seen["progress"]["totalSteps"] == 6
    # Resolved values, estimate and placement are recorded.
    assert status["resolved"]["loraAlpha"] == 16
    assert status["resolved"]["targetModules"] == ["q_proj", "v_proj"]
    assert status["estimate"]["totalBytes"] > 0 and status["estimate"]["calibrated"] is estimate.CALIBRATED
    assert status["placement"]["node"].startswith("gpu-")
    assert status["data"]["examples"] == 60
    assert status["observedGeneration"] == 1
    # The adapter and its manifest are in S3, under a prefix carrying the job's UID.
    adapter = status["adapter"]
    assert uid in adapter["uri"] and adapter["manifestUri"].endswith("manifest.json")
    keys = s3_keys(s3_client, f"adapters/{name}-{uid}/adapter/")
    assert any(k.endswith("adapter_model.safetensors") for k in keys)
    manifest_json = json.loads(s3_client.get_object(Bucket=BUCKET, Key=f"adapters/{name}-{uid}/adapter/manifest.json")
                               ["Body"].read())
    assert (manifest_json["jobUid"], manifest_json["jobName"]) == (uid, name)
    assert status["baselineEvalLoss"] and status["finalEvalLoss"]
    conds = _conditions(body)
    assert conds["Succeeded"]["status"] == "True" and conds["Validated"]["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in conds.values())
    reasons = {e.reason for e in jobs.events(name)}
    assert {"Inspecting", "Succeeded"} <= reasons
    # The trainer's ServiceAccount may touch only its own progress ConfigMap.
    role = client.RbacAuthorizationV1Api(jobs.core.api_client).read_namespaced_role(f"{name}-trainer", jobs.namespace)
    assert role.rules[0].resource_names == [f"{name}-progress"]
    assert "finetune_reconcile_duration_seconds_count" in op.metrics()


def test_operator_policy_refusal_is_invalid_spec(jobs: Jobs, start_operator: Any) -> None:
    start_operator(allowed_trainer_images=["registry.example/fto/trainer:0.2.0"])
    name = unique("trust")
    body = manifest(name)
    body["spec"]["baseModel"]["trustRemoteCode"] = True
    jobs.create(body)
    image = unique("image")
    jobs.create(manifest(image, trainerImage="registry.example/someone/trainer:latest"))
    status = jobs.wait_state(name, "Failed", timeout=60)["status"]
    assert status["failure"]["reason"] == "InvalidSpec"
    assert "spec.baseModel.trustRemoteCode" in status["failure"]["message"]
    assert jobs.pods(f"finetune.dev/job={name}") == []
    status = jobs.wait_state(image, "Failed", timeout=60)["status"]
    assert status["failure"]["reason"] == "InvalidSpec"
    assert "spec.trainerImage" in status["failure"]["message"]
    assert "registry.example/someone/trainer:latest" in status["failure"]["message"]
    assert jobs.pods(f"finetune.dev/job={image}") == []


def test_bad_data_is_stopped_at_inspection_without_a_gpu_job(jobs: Jobs, start_operator: Any) -> None:
    start_operator()
    name = unique("bad-data")
    jobs.create(manifest(name, dataset={"trainUri": BAD_DATA, "format": "messages", "maxSeqLength": 128}))
    status = jobs.wait_state(name, "Failed", timeout=300)["status"]
    assert status["failure"]["reason"] == "DataError"
    message = status["failure"]["message"]
    assert "line 3" in message and "line 7" in message, message
    assert "inspection.json" in message  # where the full report is
    assert jobs.training_jobs() == []


def test_70b_lora_without_quantization_is_unschedulable_with_suggestions(jobs: Jobs, start_operator: Any) -> None:
    start_operator()
    name = unique("big-lora")
    jobs.create(manifest(name, baseModel={"uri": SHAPE_70B}, method="lora",
                         dataset={"trainUri": "s3://finetune/data/chat.jsonl", "maxSeqLength": 2048},
                         lora={"r": 16}, training={"maxSteps": 10}))
    status = jobs.wait_state(name, "Failed", timeout=300)["status"]
    assert status["failure"]["reason"] == "Unschedulable"
    message = status["failure"]["message"]
    assert "Suggestions" in message and "qlora" in message.lower()
    assert status["estimate"]["totalBytes"] > 140 * 10**9
    assert jobs.training_jobs() == []


def test_70b_qlora_gets_an_affinity_the_scheduler_honours(jobs: Jobs, start_operator: Any) -> None:
    start_operator()
    name = unique("big-qlora")
    jobs.create(manifest(name, baseModel={"uri": SHAPE_70B},
                         dataset={"trainUri": "s3://finetune/data/chat.jsonl", "maxSeqLength": 2048},
                         lora={"r": 16}, training={"maxSteps": 10}))
    jobs.wait(name, lambda b: bool((b.get("status") or {}).get("jobName")), 300, "a training Job")
    status = jobs.get(name)["status"]
    assert status["placement"]["eligibleProducts"] == ["NVIDIA-H100-80GB-HBM3"]
    pods = until(lambda: [p for p in jobs.pods("app.kubernetes.io/component=training") if p.spec.node_name], 60,
                 "the training pod bound to a node")
    assert pods[0].spec.node_name == "gpu-h100-80gb-0"
    jobs.delete(name)


def _pod_logs(jobs: Jobs, name: str) -> str:
    out = []
    for pod in jobs.pods(f"finetune.dev/job={name}"):
        try:
            out.append(jobs.core.read_namespaced_pod_log(pod.metadata.name, jobs.namespace))
        except client.ApiException:
            state_dir = Path(os.environ.get("FTO_STATE_DIR", ""))
            for log in state_dir.glob(f"pods/*{pod.metadata.name}*/*.log"):
                out.append(log.read_text(errors="replace"))
    return "\n".join(out)


def test_host_oom_and_cuda_oom_are_told_apart(jobs: Jobs, start_operator: Any) -> None:
    start_operator(trainer_image="ghcr.io/finetune-operator/trainer:test-cuda-oom")
    cuda = unique("cuda-oom")
    jobs.create(manifest(cuda))
    host = unique("host-oom")
    jobs.create(manifest(host, resources={"gpus": 1, "memory": "200Mi"}))
    cuda_status = jobs.wait_state(cuda, "Failed", timeout=400)["status"]
    assert cuda_status["failure"]["reason"] == "OutOfMemory"
    assert "CUDA out of memory" in cuda_status["failure"]["message"]
    assert "microBatchSize" in cuda_status["failure"]["message"]
    host_status = jobs.wait_state(host, "Failed", timeout=400)["status"]
    assert host_status["failure"]["reason"] == "OutOfMemory"
    assert "host memory" in host_status["failure"]["message"]


def test_deadline_exceeded(jobs: Jobs, start_operator: Any) -> None:
    start_operator(trainer_image="ghcr.io/finetune-operator/trainer:test-slow")
    name = unique("deadline")
    jobs.create(manifest(name, runPolicy={"backoffLimit": 1, "activeDeadlineSeconds": 20},
                         training={"maxSteps": 500, "microBatchSize": 1, "gradientAccumulation": 1}))
    status = jobs.wait_state(name, "Failed", timeout=300)["status"]
    assert status["failure"]["reason"] == "DeadlineExceeded"


def test_suspend_keeps_the_checkpoint_and_resume_continues(jobs: Jobs, start_operator: Any) -> None:
    # The first trainer waits after its first checkpoint until SIGTERM: the suspension always
    # meets a run in progress, however fast this machine trains and the status arrives.
    start_operator(trainer_image="ghcr.io/finetune-operator/trainer:test-hold")
    name = unique("suspend")
    jobs.create(manifest(name, training={"maxSteps": 10, "microBatchSize": 2, "gradientAccumulation": 1,
                                         "checkpoint": {"everySteps": 2, "keep": 2}},
                         runPolicy={"backoffLimit": 0}))
    jobs.wait(name, lambda b: ((b.get("status") or {}).get("lastCheckpoint") or {}).get("step", 0) >= 2,
              400, "a first checkpoint")
    jobs.patch(name, {"spec": {"runPolicy": {"suspend": True}}})
    jobs.wait_state(name, "Suspended", timeout=120)
    training = f"finetune.dev/job={name},app.kubernetes.io/component=training"
    until(lambda: not any(p.status.phase in ("Running", "Pending") for p in jobs.pods(training)), 60,
          "the training pod stopped while suspended")
    jobs.patch(name, {"spec": {"runPolicy": {"suspend": False}}})
    status = jobs.wait_state(name, "Succeeded", timeout=600)["status"]
    assert status["attempts"] >= 2
    assert "resum" in _pod_logs(jobs, name).lower()
    assert status["adapter"]["uri"]


def test_delete_while_running_removes_pods_and_keeps_s3(jobs: Jobs, start_operator: Any, s3_client: Any) -> None:
    start_operator(trainer_image="ghcr.io/finetune-operator/trainer:test-slow")
    name = unique("cancel")
    uid = jobs.create(manifest(name, training={"maxSteps": 200, "microBatchSize": 1, "gradientAccumulation": 1,
                                                "checkpoint": {"everySteps": 2, "keep": 2}}))["metadata"]["uid"]
    jobs.wait(name, lambda b: ((b.get("status") or {}).get("lastCheckpoint") or {}).get("step", 0) >= 2,
              400, "a first checkpoint")
    before = s3_keys(s3_client, f"adapters/{name}-{uid}/")
    assert before
    jobs.delete(name)
    until(lambda: not jobs.training_jobs() and not jobs.pods(f"finetune.dev/job={name}"), 120,
          "the Job and pods removed")
    after = s3_keys(s3_client, f"adapters/{name}-{uid}/")
    assert any(k.endswith("_COMPLETE") for k in after), "checkpoints in S3 must survive a cancel"


def test_operator_killed_mid_reconcile_converges_without_duplicates(jobs: Jobs, start_operator: Any) -> None:
    first = start_operator(identity="operator-a")
    name = unique("restart")
    jobs.create(manifest(name))
    jobs.wait(name, lambda b: (b.get("status") or {}).get("state") in ("Inspecting", "Queued", "Running"),
              120, "reconcile started")
    first.kill()
    second = start_operator(identity="operator-b", wait=False)
    second.wait_leader(timeout=90)  # the Lease of the killed operator must expire first
    status = jobs.wait_state(name, "Succeeded", timeout=600)["status"]
    assert status["adapter"]["uri"]
    assert len(jobs.training_jobs()) == 1
    assert len(jobs.pods(f"finetune.dev/job={name},app.kubernetes.io/component=inspection")) == 1


def test_two_replicas_handle_each_job_once(jobs: Jobs, start_operator: Any) -> None:
    a = start_operator(identity="replica-a")
    b = start_operator(identity="replica-b", wait=False)
    # b is up and has seen the Lease held: it answers health as a standby, not as a second leader
    until(lambda: b.health()[1].get("leader") is False, 60, "replica-b up as a standby")
    assert a.health()[1].get("leader") is True, "replica-a must keep the Lease"
    names = [unique("pair"), unique("pair")]
    for name in names:
        jobs.create(manifest(name))
    for name in names:
        jobs.wait_state(name, "Succeeded", timeout=600)
        inspecting = [e for e in jobs.events(name) if e.reason == "Inspecting"]
        assert len(inspecting) == 1, f"{name} was inspected {len(inspecting)} times"
    assert len(jobs.training_jobs()) == 2


def test_operator_cannot_read_secrets(start_operator: Any, kubectl: Any, job_namespace: str) -> None:
    start_operator()
    who = f"system:serviceaccount:{job_namespace}:finetune-operator"
    for verb in ("get", "list"):
        out = kubectl("auth", "can-i", verb, "secrets", "-n", job_namespace, "--as", who, check=False)
        assert out.stdout.strip() == "no"
    assert kubectl("auth", "can-i", "create", "jobs.batch", "-n", job_namespace, "--as", who).stdout.strip() == "yes"


def test_bad_operator_configuration_exits_with_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("vram_headroom: '2'\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "finetune-operator"), "run"],
                          env={**os.environ, "FINETUNE_OPERATOR_CONFIG": str(cfg)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "vram_headroom" in proc.stderr


def test_health_endpoint_reports_leader_and_watch_age(start_operator: Any) -> None:
    op = start_operator()
    status, probes = op.health()
    assert status == 200
    assert probes["leader"] is True
    assert 0 <= probes["watchAgeSeconds"] < 4 * 6


def test_the_lease_is_watched_in_its_own_namespace_whatever_namespaces_are_served(
        start_operator: Any, k8s_api: client.ApiClient) -> None:
    """The operator serves only the test's namespace; its Lease lives in another one. The Lease's
    watch (the liveness heartbeat) must follow the Lease, not the served namespaces."""
    lease = unique("leader")
    coordination = client.CoordinationV1Api(k8s_api)
    try:
        op = start_operator(lease_namespace="default", lease_name=lease)
        started = time.monotonic()
        # Renewed every 2 s (6 s Lease): a watched Lease keeps the age near 0; an unwatched one
        # lets it grow with the operator's uptime.
        until(lambda: time.monotonic() - started > 12 and op.health()[1].get("watchAgeSeconds", 99) < 4,
              90, "the Lease's watch events reach the heartbeat", interval=1)
        assert op.health()[0] == 200
    finally:
        ignore_404(lambda: coordination.delete_namespaced_lease(lease, "default"))


def test_new_gpu_capacity_starts_a_waiting_job(jobs: Jobs, start_operator: Any, k8s_api: Any) -> None:
    """A job that fits no GPU waits (waitForCapacity) and starts when a node that fits appears."""
    start_operator()
    name = unique("wait-capacity")
    jobs.create(manifest(name, baseModel={"uri": SHAPE_70B}, method="lora",
                         dataset={"trainUri": "s3://finetune/data/chat.jsonl", "maxSeqLength": 2048},
                         lora={"r": 16}, training={"maxSteps": 10},
                         # The node below is tainted so that no pod really runs there (it has no kubelet);
                         # placement counts only nodes the job tolerates.
                         resources={"gpus": 1, "memory": "6Gi", "tolerations": [
                             {"key": "finetune.dev/test-only", "operator": "Exists", "effect": "NoSchedule"}]},
                         runPolicy={"backoffLimit": 0, "waitForCapacity": True}))
    body = jobs.wait_state(name, "Queued", timeout=300)
    assert _conditions(body)["Scheduled"]["reason"] == "WaitingForCapacity"
    assert jobs.training_jobs() == []
    core = client.CoreV1Api(k8s_api)
    node_name = unique("gpu-b200")
    core.create_node({"metadata": {"name": node_name, "labels": {
        "nvidia.com/gpu.product": "NVIDIA-B200", "nvidia.com/gpu.memory": "183359", "nvidia.com/gpu.count": "1",
        "nvidia.com/gpu.compute.major": "10", "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.family": "blackwell",
        "kubernetes.io/hostname": node_name}},
        "spec": {"taints": [{"key": "finetune.dev/test-only", "effect": "NoSchedule"}]}})
    try:
        core.patch_node_status(node_name, {"status": {"capacity": {"nvidia.com/gpu": "1", "cpu": "64", "memory": "512Gi", "pods": "10"},
                                                      "allocatable": {"nvidia.com/gpu": "1", "cpu": "64", "memory": "512Gi", "pods": "10"}}})
        body = jobs.wait(name, lambda b: bool((b.get("status") or {}).get("jobName")), 120, "a training Job")
        assert body["status"]["placement"]["eligibleProducts"] == ["NVIDIA-B200"]
        assert len(jobs.training_jobs()) == 1
    finally:
        jobs.delete(name)
        ignore_404(lambda: core.delete_node(node_name))
