"""The reconcile decision on observed objects: every state transition, no API server."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import yaml

from finetune_operator import builders, cache, naming, reconcile
from finetune_operator import conditions as cond
from finetune_operator.config import OperatorConfig
from localcluster.fleet import node_objects

CONFIG = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"}})
FLEET = node_objects({"nodes": [
    {"name": "gpu-t4-0", "gpu": {"product": "Tesla-T4", "memoryMiB": 15360, "count": 1, "computeMajor": 7,
                                 "computeMinor": 5, "family": "turing"}},
    {"name": "gpu-h100-0", "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "count": 1,
                                   "computeMajor": 9, "computeMinor": 0, "family": "hopper"}},
    {"name": "cpu-0"},
]})
TINY_ARCH = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 400, "tie_word_embeddings": False,
             "module_names": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def pod(phase: str, *, exit_code: int | None = None, reason: str = "", message: Any = None,
        conditions: list[dict[str, Any]] | None = None, waiting: str = "", name: str = "p",
        created: str = "2026-01-01T00:00:00Z", node: str = "gpu-t4-0") -> cache.PodFacts:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                                "message": json.dumps(message) if isinstance(message, dict) else (message or "")}}
    elif waiting:
        state = {"waiting": {"reason": waiting, "message": "pull failed"}}
    elif phase == "Running":
        state = {"running": {"startedAt": created}}
    return cache.pod_facts({"metadata": {"name": name, "creationTimestamp": created},
                            "spec": {"nodeName": node, "containers": [{"name": "trainer", "image": "img"}]},
                            "status": {"phase": phase, "conditions": conditions or [],
                                       "containerStatuses": [{"name": "trainer", "state": state}]}})


def inspected(body: dict[str, Any], arch: dict[str, Any] | None = None) -> reconcile.Observed:
    summary = {"class": "Succeeded", "architecture": arch or TINY_ARCH,
               "data": {"examples": 100, "train": 90, "validation": 10, "tokens": {"p50": 40, "p95": 80, "max": 90},
                        "truncatedFraction": "0", "warnings": []},
               "lossMasking": {"mode": "assistant_only", "trainOnInputs": False, "chatTemplate": "chatml",
                               "zeroWeightMessages": 0}}
    return reconcile.Observed(body=body,
                              inspect_pod=pod("Succeeded", exit_code=0, message=summary), nodes=FLEET)


def with_job(body: dict[str, Any], pods: list[cache.PodFacts], job_conditions: list[dict[str, Any]] | None = None,
             progress: dict[str, Any] | None = None, suspend: bool = False) -> reconcile.Observed:
    job = cache.job_facts({"metadata": {"name": "llama-chat-train", "uid": "j1"}, "spec": {"suspend": suspend},
                           "status": {"conditions": job_conditions or []}})
    return reconcile.Observed(body=body, job=job, pods=pods, nodes=FLEET, progress=progress or {})


def condition(plan: reconcile.Plan, type_: str) -> dict[str, Any]:
    """The status condition of `type_` (a list-map keyed by type: never by position)."""
    (found,) = [c for c in plan.status_data()["conditions"] if c["type"] == type_]
    return dict(found)


def kinds(plan: reconcile.Plan) -> list[str]:
    return [o["kind"] for o in plan.ensure]


def ensured(plan: reconcile.Plan, kind: str) -> dict[str, Any]:
    (found,) = [o for o in plan.ensure if o["kind"] == kind]
    return found


def test_new_job_starts_inspection_without_gpus(body: dict[str, Any]) -> None:
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), CONFIG)
    assert plan.status_data()["state"] == "Inspecting"
    assert kinds(plan) == ["Pod"]  # its configuration rides in the pod: nothing to create before it
    assert "nvidia.com/gpu" not in json.dumps(ensured(plan, "Pod")["spec"]["containers"][0]["resources"])
    assert plan.status_data()["observedGeneration"] == 1
    assert ("Normal", "Inspecting", condition(plan, cond.INSPECTED)["message"]) in plan.events


def test_invalid_spec_fails_with_field_path(body: dict[str, Any]) -> None:
    body["spec"]["lora"]["r"] = 0
    plan = reconcile.plan(reconcile.Observed(body=body), CONFIG)
    assert plan.status_data()["state"] == "Failed"
    assert plan.status_data()["failure"]["reason"] == "InvalidSpec"
    assert "spec.lora.r" in plan.status_data()["failure"]["message"]
    assert plan.ensure == []


def test_trust_remote_code_refused_unless_configured(body: dict[str, Any]) -> None:
    body["spec"]["baseModel"]["trustRemoteCode"] = True
    plan = reconcile.plan(reconcile.Observed(body=body), CONFIG)
    assert plan.status_data()["failure"]["reason"] == "InvalidSpec"
    assert "spec.baseModel.trustRemoteCode" in plan.status_data()["failure"]["message"]
    allowed = CONFIG.model_copy(update={"allow_trust_remote_code": True})
    assert reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), allowed).status_data()["state"] == "Inspecting"


def test_endpoint_outside_allow_list_refused(body: dict[str, Any]) -> None:
    body["spec"]["output"]["endpoint"] = "http://evil.example:9000"
    plan = reconcile.plan(reconcile.Observed(body=body), CONFIG)
    assert "spec.output.endpoint" in plan.status_data()["failure"]["message"]


def test_trainer_image_outside_allow_list_refused(body: dict[str, Any]) -> None:
    """allowedTrainerImages set: a job naming another image fails on the field; a listed one runs in it."""
    body["spec"]["trainerImage"] = "registry.example/someone/trainer:latest"
    listed = "registry.example/fto/trainer:0.2.0"
    config = CONFIG.model_copy(update={"allowed_trainer_images": [listed]})
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), config)
    assert plan.status_data()["failure"]["reason"] == "InvalidSpec"
    message = plan.status_data()["failure"]["message"]
    assert "spec.trainerImage" in message and "registry.example/someone/trainer:latest" in message and listed in message
    assert plan.ensure == []

    body["spec"]["trainerImage"] = listed
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), config)
    assert plan.status_data()["state"] == "Inspecting"
    assert ensured(plan, "Pod")["spec"]["containers"][0]["image"] == listed


def test_trainer_image_without_allow_list_is_only_the_default(body: dict[str, Any]) -> None:
    """No allow-list: unset means the operator's image, naming it is fine, naming any other is refused."""
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), CONFIG)
    assert ensured(plan, "Pod")["spec"]["containers"][0]["image"] == CONFIG.trainer_image
    body["spec"]["trainerImage"] = CONFIG.trainer_image
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), CONFIG)
    assert plan.status_data()["state"] == "Inspecting"
    body["spec"]["trainerImage"] = "registry.example/someone/trainer:latest"
    plan = reconcile.plan(reconcile.Observed(body=body, nodes=FLEET), CONFIG)
    assert plan.status_data()["failure"]["reason"] == "InvalidSpec"
    assert "spec.trainerImage" in plan.status_data()["failure"]["message"]
    assert plan.ensure == []


def test_data_error_at_inspection_fails_without_a_job(body: dict[str, Any]) -> None:
    obs = reconcile.Observed(body=body, inspect_pod=pod(
        "Failed", exit_code=builders.EXIT_DATA_ERROR,
        message={"class": "DataError", "message": "line 3: invalid JSON", "reportUri": "s3://b/r.json"}))
    plan = reconcile.plan(obs, CONFIG)
    assert plan.status_data()["failure"]["reason"] == "DataError"
    assert "line 3: invalid JSON" in plan.status_data()["failure"]["message"]
    assert "s3://b/r.json" in plan.status_data()["failure"]["message"]
    assert plan.ensure == []
    assert plan.events[0][0] == "Warning"


def test_image_pull_failure_at_inspection(body: dict[str, Any]) -> None:
    obs = reconcile.Observed(body=body, inspect_pod=pod("Pending", waiting="ErrImagePull"))
    assert reconcile.plan(obs, CONFIG).status_data()["failure"]["reason"] == "ImagePullFailed"


def test_passed_inspection_creates_training_objects_with_resolved_values(body: dict[str, Any]) -> None:
    body["spec"]["baseModel"] = {"uri": "s3://models/tiny/"}
    plan = reconcile.plan(inspected(body), CONFIG)
    assert kinds(plan) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    assert plan.status_data()["state"] == "Queued"
    resolved = plan.status_data()["resolved"]
    assert resolved["loraAlpha"] == 32
    assert resolved["targetModules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # [auto]: all linear
    assert plan.status_data()["estimate"]["totalBytes"] > 0
    assert plan.status_data()["data"]["examples"] == 100
    # What the loss covers is recorded in status, as the inspection decided it (issue 9 part 3).
    assert plan.status_data()["data"]["lossMasking"] == "assistant_only"
    assert plan.status_data()["data"]["chatTemplate"] == "chatml"
    job = ensured(plan, "Job")
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert terms["requiredDuringSchedulingIgnoredDuringExecution"]
    train_cfg = yaml.safe_load(job["spec"]["template"]["metadata"]["annotations"][builders.CONFIG_ANNOTATION])
    assert train_cfg["progress_configmap"] == "llama-chat-progress"
    assert (train_cfg["lora_alpha"], train_cfg["lora_target_modules"]) == (32, resolved["targetModules"])


def test_70b_lora_without_quantization_is_unschedulable_with_suggestions(body: dict[str, Any]) -> None:
    body["spec"]["baseModel"] = {"uri": "hf://meta-llama/Llama-3.1-70B"}
    body["spec"]["method"] = "lora"
    obs = reconcile.Observed(body=body, inspect_pod=pod(
        "Succeeded", exit_code=0, message={"class": "Succeeded"}), nodes=FLEET)
    plan = reconcile.plan(obs, CONFIG)
    assert plan.status_data()["failure"]["reason"] == "Unschedulable"
    assert "Suggestions" in plan.status_data()["failure"]["message"]
    assert "qlora" in plan.status_data()["failure"]["message"]
    assert not any(o["kind"] == "Job" for o in plan.ensure)


def test_wait_for_capacity_queues_instead_of_failing(body: dict[str, Any]) -> None:
    body["spec"]["baseModel"] = {"uri": "hf://meta-llama/Llama-3.1-70B"}
    body["spec"]["method"] = "lora"
    body["spec"]["runPolicy"]["waitForCapacity"] = True
    obs = reconcile.Observed(body=body, inspect_pod=pod(
        "Succeeded", exit_code=0, message={"class": "Succeeded"}), nodes=FLEET)
    plan = reconcile.plan(obs, CONFIG)
    assert plan.status_data()["state"] == "Queued"
    assert condition(plan, cond.SCHEDULED)["reason"] == "WaitingForCapacity"


def test_running_pod_reports_progress(body: dict[str, Any]) -> None:
    progress = {"phase": "training", "step": 25, "totalSteps": 100, "trainLoss": "1.5", "etaSeconds": 30,
                "baselineEvalLoss": "2.5", "lastCheckpoint": {"step": 20, "uri": "s3://x/checkpoint-20/"}}
    plan = reconcile.plan(with_job(body, [pod("Running")], progress=progress), CONFIG)
    assert plan.status_data()["state"] == "Running"
    assert plan.status_data()["progress"]["percent"] == 25
    assert plan.status_data()["baselineEvalLoss"] == "2.5"
    assert plan.status_data()["lastCheckpoint"]["step"] == 20
    assert plan.status_data()["placement"]["node"] == "gpu-t4-0"
    assert plan.status_data()["placement"]["gpuProduct"] == "Tesla-T4"


def test_eviction_is_a_disruption_not_a_failure(body: dict[str, Any]) -> None:
    evicted = pod("Failed", exit_code=builders.EXIT_INTERRUPTED, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "evicted",
         "lastTransitionTime": "2026-01-01T00:01:00Z"}], name="p1")
    replacement = pod("Running", name="p2", created="2026-01-01T00:02:00Z")
    plan = reconcile.plan(with_job(body, [evicted, replacement]), CONFIG)
    assert plan.status_data()["state"] == "Running"
    assert plan.status_data()["attempts"] == 2
    assert plan.status_data()["lastDisruption"]["reason"] == "EvictionByEvictionAPI"


def test_success_fills_adapter_and_losses(body: dict[str, Any]) -> None:
    summary = {"class": "Succeeded", "adapter": {"uri": "s3://a/adapter/", "sizeBytes": 1234, "sha256": "a" * 64,
                                                 "manifestUri": "s3://a/adapter/manifest.json"},
               "baselineEvalLoss": "2.5", "finalEvalLoss": "1.1"}
    plan = reconcile.plan(with_job(body, [pod("Succeeded", exit_code=0, message=summary)],
                                   [{"type": "Complete", "status": "True"}]), CONFIG)
    assert plan.status_data()["state"] == "Succeeded"
    assert plan.status_data()["adapter"]["sha256"] == "a" * 64
    assert plan.status_data()["finalEvalLoss"] == "1.1"
    assert plan.status_data()["completionTime"]


@pytest.mark.parametrize("exit_code, reason, job_reason, expected", [
    (builders.EXIT_CUDA_OOM, "Error", "PodFailurePolicy", "OutOfMemory"),
    (137, "OOMKilled", "BackoffLimitExceeded", "OutOfMemory"),
    (builders.EXIT_DATA_ERROR, "Error", "PodFailurePolicy", "DataError"),
    (builders.EXIT_CONFIG_ERROR, "Error", "PodFailurePolicy", "InvalidSpec"),
    (1, "Error", "BackoffLimitExceeded", "BackoffLimitExceeded"),
    (None, "", "DeadlineExceeded", "DeadlineExceeded"),
])
def test_failures_are_classified(body: dict[str, Any], exit_code: int | None, reason: str, job_reason: str,
                                 expected: str) -> None:
    pods = [pod("Failed", exit_code=exit_code, reason=reason, message={"message": "boom"})] if exit_code else []
    plan = reconcile.plan(with_job(body, pods, [{"type": "Failed", "status": "True", "reason": job_reason}]), CONFIG)
    assert plan.status_data()["state"] == "Failed"
    assert plan.status_data()["failure"]["reason"] == expected
    if expected == "OutOfMemory":
        assert ("host memory" in plan.status_data()["failure"]["message"]) == (reason == "OOMKilled")


def test_suspend_patches_the_job_and_reports_suspended(body: dict[str, Any]) -> None:
    body["spec"]["runPolicy"]["suspend"] = True
    plan = reconcile.plan(with_job(body, []), CONFIG)
    assert plan.job_suspend is True
    assert plan.status_data()["state"] == "Suspended"
    body["spec"]["runPolicy"]["suspend"] = False
    body["status"] = plan.status_data()
    resumed = reconcile.plan(with_job(body, [pod("Running")], suspend=True), CONFIG)
    assert resumed.job_suspend is False
    assert resumed.status_data()["state"] == "Running"


def test_kueue_owns_suspend(body: dict[str, Any]) -> None:
    body["spec"]["resources"]["kueueQueue"] = "q"
    plan = reconcile.plan(with_job(body, [], [{"type": "Suspended", "status": "True"}], suspend=True), CONFIG)
    assert plan.job_suspend is None
    assert plan.status_data()["state"] == "Queued"


def test_image_pull_failure_of_training_pod_deletes_the_job(body: dict[str, Any]) -> None:
    plan = reconcile.plan(with_job(body, [pod("Pending", waiting="ImagePullBackOff")]), CONFIG)
    assert plan.status_data()["failure"]["reason"] == "ImagePullFailed"
    assert plan.delete_job


def test_unschedulable_pod_is_queued_with_the_scheduler_message(body: dict[str, Any]) -> None:
    pending = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/5 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    plan = reconcile.plan(with_job(body, [pending]), CONFIG)
    assert plan.status_data()["state"] == "Queued"
    assert "Insufficient nvidia.com/gpu" in condition(plan, cond.SCHEDULED)["message"]


def test_finished_jobs_are_left_alone(body: dict[str, Any]) -> None:
    body["status"] = {"state": "Succeeded", "observedGeneration": 1}
    plan = reconcile.plan(reconcile.Observed(body=body), CONFIG)
    assert plan.ensure == [] and plan.events == [] and plan.job_suspend is None


def _hashed(facts: Any, spec_hash: str) -> Any:
    return dataclasses.replace(facts, spec_hash=spec_hash)


def test_spec_drift_is_reported(body: dict[str, Any]) -> None:
    """The hash the Job (or, before it, the inspection pod) was rendered from, against the spec now."""
    obs = with_job(body, [pod("Running")])
    obs.job = _hashed(obs.job, builders.spec_hash(body["spec"]))
    assert condition(reconcile.plan(obs, CONFIG), "Validated")["reason"] == "Valid"
    obs.job = _hashed(obs.job, "0000")
    validated = condition(reconcile.plan(obs, CONFIG), "Validated")
    assert validated["reason"] == "SpecChangeIgnored"
    assert "delete and re-create" in validated["message"]

    inspecting = reconcile.Observed(body=body, inspect_pod=_hashed(pod("Running"), "0000"), nodes=FLEET)
    assert condition(reconcile.plan(inspecting, CONFIG), "Validated")["reason"] == "SpecChangeIgnored"


def test_the_spec_hash_is_read_from_the_annotation_of_a_pod_or_job() -> None:
    annotated = {"metadata": {"annotations": {naming.SPEC_HASH_ANNOTATION: "abc"}}}
    assert cache.pod_facts(annotated).spec_hash == cache.job_facts(annotated).spec_hash == "abc"
    assert cache.pod_facts({"metadata": {}}).spec_hash is None  # made by an operator that recorded none


def test_replay_is_stable(body: dict[str, Any]) -> None:
    """Reconciling the same observation twice yields the same status: no flapping writes."""
    first = reconcile.plan(with_job(body, [pod("Running")], progress={"step": 3, "totalSteps": 10}), CONFIG)
    body["status"] = first.status_data()
    second = reconcile.plan(with_job(body, [pod("Running")], progress={"step": 3, "totalSteps": 10}), CONFIG)
    assert second.status == first.status and second.events == []


def test_a_complete_job_whose_succeeded_pod_the_cache_lacks_is_confirmed_not_failed(body: dict[str, Any]) -> None:
    """The Job's and the pods' watches are not ordered: a new leader's cache may hold the Complete
    Job while its pod still shows Running. That is a late cache, never AdapterNotReported."""
    body["status"] = {"state": "Running", "attempts": 1}
    late = with_job(body, [pod("Running")], [{"type": "Complete", "status": "True"}])
    plan = reconcile.plan(late, CONFIG)
    assert plan.confirm_pods and plan.status_data()["state"] == "Running" and plan.events == []
    late.pods_confirmed = True  # the API server has no succeeded pod either (e.g. removed by hand)
    assert reconcile.plan(late, CONFIG).status_data()["failure"]["reason"] == "AdapterNotReported"


def test_completion_without_an_adapter_report_is_not_success(body: dict[str, Any]) -> None:
    plan = reconcile.plan(with_job(body, [pod("Succeeded", exit_code=0, message="")],
                                   [{"type": "Complete", "status": "True"}]), CONFIG)
    assert plan.status_data()["state"] == "Failed"
    assert plan.status_data()["failure"]["reason"] == "AdapterNotReported"
    assert "adapter" not in plan.status_data()


@pytest.mark.parametrize("value, expected", [
    (5.97772741317749, "5.97773"), ("2.5", "2.5"), (1e-5, "1e-05"), (float("nan"), "NaN"),
    (float("inf"), "Inf"), (float("-inf"), "-Inf"), ("garbage", "NaN"), (812.0, "812"),
])
def test_decimal_strings_fit_the_status_schema(value: Any, expected: str) -> None:
    import re

    from finetune_operator import api

    assert reconcile.decimal_string(value) == expected
    pattern = api.FineTuneJobStatus.model_json_schema()["$defs"]["ProgressStatus"]["properties"]["trainLoss"]
    regex = next(b["pattern"] for b in pattern["anyOf"] if "pattern" in b)
    assert re.match(regex, expected)


def test_attempts_survive_deleted_pods(body: dict[str, Any]) -> None:
    """An evicted or suspended pod is deleted; the next pod is still counted as a new attempt."""
    first = reconcile.plan(with_job(body, [pod("Running", name="train-a")]), CONFIG)
    assert first.status_data()["attempts"] == 1
    body["status"] = first.status_data()
    again = reconcile.plan(with_job(body, [pod("Running", name="train-a")]), CONFIG)
    assert again.status_data()["attempts"] == 1
    body["status"] = again.status_data()
    replaced = reconcile.plan(with_job(body, [pod("Running", name="train-b", created="2026-01-01T00:05:00Z")]),
                              CONFIG)
    assert replaced.status_data()["attempts"] == 2
    assert replaced.status_data()["placement"]["pod"] == "train-b"


def test_data_error_lists_the_first_bad_lines(body: dict[str, Any]) -> None:
    summary = {"class": "DataError", "message": "data unusable: 2 lines have errors",
               "data": {"errors": [{"line": 3, "message": "invalid JSON"}, {"line": 7, "message": "unknown role"}]}}
    obs = reconcile.Observed(body=body,
                             inspect_pod=pod("Failed", exit_code=builders.EXIT_DATA_ERROR, message=summary))
    message = reconcile.plan(obs, CONFIG).status_data()["failure"]["message"]
    assert "line 3: invalid JSON" in message and "line 7: unknown role" in message


def test_a_job_deleted_behind_our_back_is_not_run_again(body: dict[str, Any]) -> None:
    first = reconcile.plan(with_job(body, [pod("Running", name="train-a")]), CONFIG)
    body["status"] = first.status_data()
    gone = reconcile.plan(inspected(body), CONFIG)
    assert gone.status_data()["failure"]["reason"] == "JobDeleted"
    assert not any(o["kind"] == "Job" for o in gone.ensure)


def test_finished_pod_before_job_completion_stays_running(body: dict[str, Any]) -> None:
    """Between the trainer's exit 0 and the Job's Complete condition the job is not 'Queued' again."""
    plan = reconcile.plan(with_job(body, [pod("Succeeded", exit_code=0, message={"class": "Succeeded"})]), CONFIG)
    assert plan.status_data()["state"] == "Running"
    assert condition(plan, cond.RUNNING)["reason"] == "Completing"
