"""The objects the operator creates, built from a spec: pure, no API server."""

from __future__ import annotations

from typing import Any

import yaml
from mounted_config import mounted_config

from finetune_operator import builders, naming
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

CONFIG = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"}})
RESOLVED = {"loraAlpha": 32, "targetModules": ["q_proj", "v_proj"], "computeDtype": "bf16",
            "microBatchSize": 2, "gradientAccumulation": 8}


def _job(body: dict[str, Any], resolved: dict[str, Any] | None = None, **spec_changes: Any) -> dict[str, Any]:
    body["spec"].update(spec_changes)
    spec = FineTuneJobSpec.model_validate(body["spec"])
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]}}
    return builders.training_job(body, spec, CONFIG, affinity, resolved or RESOLVED)


def _train_yaml(job: dict[str, Any]) -> dict[str, Any]:
    template = job["spec"]["template"]
    filename, text = mounted_config(template["metadata"], template["spec"])
    assert filename == "train.yaml"
    return dict(yaml.safe_load(text))


def test_job_is_owned_named_and_labelled(body: dict[str, Any]) -> None:
    job = _job(body)
    meta = job["metadata"]
    assert meta["name"] == "llama-chat-train"
    assert meta["ownerReferences"] == [{
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "llama-chat",
        "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    for key in ("name", "instance", "component", "managed-by"):
        assert f"app.kubernetes.io/{key}" in meta["labels"]
    assert meta["labels"][naming.UID_LABEL] == body["metadata"]["uid"]


def test_job_failure_policy_ignores_disruptions_and_fails_fast_on_permanent_errors(body: dict[str, Any]) -> None:
    spec = _job(body)["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [builders.EXIT_INTERRUPTED]
    assert rules[2]["action"] == "FailJob"
    assert set(rules[2]["onExitCodes"]["values"]) == {builders.EXIT_DATA_ERROR, builders.EXIT_CONFIG_ERROR,
                                                       builders.EXIT_CUDA_OOM}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_template_requests_gpus_with_affinity_and_restricted_security(body: dict[str, Any]) -> None:
    pod = _job(body)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["memory"] == "32Gi"
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["serviceAccountName"] == "llama-chat-trainer"
    assert pod["terminationGracePeriodSeconds"] == CONFIG.termination_grace_period_seconds
    assert container["args"] == ["--config", builders.TRAINER_CONFIG_PATH]


def test_credentials_only_by_secret_reference(body: dict[str, Any]) -> None:
    env = _job(body)["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    assert "value" not in by_name["AWS_SECRET_ACCESS_KEY"]


def test_kueue_job_is_created_suspended_with_the_queue_label(body: dict[str, Any]) -> None:
    body["spec"]["resources"]["kueueQueue"] = "gpu-queue"
    job = _job(body)
    assert job["metadata"]["labels"][builders.KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert job["spec"]["suspend"] is True


def test_run_policy_maps_to_job_fields(body: dict[str, Any]) -> None:
    body["spec"]["runPolicy"] = {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60,
                                 "suspend": True}
    spec = _job(body)["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (1, 3600, 60)
    assert spec["suspend"] is True


def test_inspection_pod_is_cpu_only_without_api_access(body: dict[str, Any]) -> None:
    spec = FineTuneJobSpec.model_validate(body["spec"])
    pod = builders.inspection_pod(body, spec, CONFIG)
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["inspect", "--config", builders.INSPECT_CONFIG_PATH]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["name"] == "llama-chat-inspect"


def test_the_inspection_pod_carries_its_configuration_and_spec_hash(body: dict[str, Any]) -> None:
    spec = FineTuneJobSpec.model_validate(body["spec"])
    pod = builders.inspection_pod(body, spec, CONFIG)
    filename, text = mounted_config(pod["metadata"], pod["spec"])
    assert filename == "inspect.yaml"
    cfg = yaml.safe_load(text)
    assert cfg == builders.trainer_config(spec, body["metadata"], CONFIG, None)
    assert cfg["expect_gpus"] == 0 and cfg["progress_configmap"] == ""  # no GPU decisions, no progress channel
    assert pod["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] == builders.spec_hash(body["spec"])


def test_trainer_config_carries_resolved_values_and_the_run_identity(body: dict[str, Any]) -> None:
    spec = FineTuneJobSpec.model_validate(body["spec"])
    job = _job(body)
    cfg = _train_yaml(job)
    # what the trainer reads back is what was built, whichever YAML emitter wrote it
    assert cfg == builders.trainer_config(spec, body["metadata"], CONFIG, RESOLVED)
    # in the Job's pod template (immutable: every attempt reads the same file), with the spec hash
    assert job["metadata"]["annotations"] == {naming.SPEC_HASH_ANNOTATION: builders.spec_hash(body["spec"])}
    assert job["spec"]["template"]["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] == builders.spec_hash(body["spec"])
    assert cfg["per_device_train_batch_size"] == 2 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["lora_alpha"] == 32 and cfg["lora_target_modules"] == ["q_proj", "v_proj"]
    assert cfg["dtype"] == "bfloat16" and cfg["load_in_4bit"] is True and cfg["use_bnb_nested_quant"] is True
    assert cfg["job_uid"] == body["metadata"]["uid"]
    assert cfg["s3_endpoint"] == "http://s3.local:8333"
    assert cfg["progress_configmap"] == "llama-chat-progress"
    assert cfg["learning_rate"] == 0.0002
    assert cfg["train_on_inputs"] is False and cfg["expect_gpus"] == spec.resources.gpus


def test_train_on_inputs_reaches_the_trainer(body: dict[str, Any]) -> None:
    body["spec"]["dataset"]["trainOnInputs"] = True
    assert _train_yaml(_job(body))["train_on_inputs"] is True


def test_trainer_config_splits_expert_parameters_and_passes_auto_dtype(body: dict[str, Any]) -> None:
    """MoE experts go to PEFT's target_parameters; a dtype left to the GPU reaches the trainer as auto."""
    resolved = {**RESOLVED, "computeDtype": "auto", "targetModules": ["q_proj", "experts.gate_up_proj", "experts.down_proj"]}
    cfg = _train_yaml(_job(body, resolved))
    assert cfg["lora_target_modules"] == ["q_proj"]
    assert cfg["lora_target_parameters"] == ["experts.gate_up_proj", "experts.down_proj"]
    assert cfg["dtype"] == "auto"
    dense = _train_yaml(_job(body))
    assert "lora_target_parameters" not in dense


def test_role_grants_only_the_progress_configmap(body: dict[str, Any]) -> None:
    role = builders.role(body)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["llama-chat-progress"], "verbs": ["get", "patch", "update"]}]
    rb = builders.role_binding(body)
    assert rb["subjects"][0]["name"] == "llama-chat-trainer"


def test_spec_hash_ignores_suspend_only(body: dict[str, Any]) -> None:
    before = builders.spec_hash(body["spec"])
    body["spec"]["runPolicy"]["suspend"] = True
    assert builders.spec_hash(body["spec"]) == before
    body["spec"]["lora"]["r"] = 8
    assert builders.spec_hash(body["spec"]) != before


def test_long_names_stay_within_label_limits() -> None:
    name = "a" * 60
    for fn in (naming.training_job, naming.inspection_pod, naming.progress, naming.service_account):
        child = fn(name)
        assert len(child) <= 63
        assert child != fn("a" * 61)


def test_the_largest_spec_the_crd_allows_fits_the_annotation_limit(body: dict[str, Any]) -> None:
    """The API server refuses a pod whose annotations exceed 256 KiB together: the longest system
    prompt the CRD allows, in characters YAML must escape (4 bytes each), still leaves room."""
    body["spec"]["dataset"]["systemPrompt"] = "\x01" * 32768
    body["spec"]["dataset"]["trainUri"] = "s3://data/" + "d" * (1024 - len("s3://data/"))
    body["spec"]["lora"]["targetModules"] = [f"{i:03d}" + "m" * 125 for i in range(64)]
    spec = FineTuneJobSpec.model_validate(body["spec"])
    resolved = {**RESOLVED, "targetModules": spec.lora.target_modules}
    for annotations in (builders.inspection_pod(body, spec, CONFIG)["metadata"]["annotations"],
                        builders.training_job(body, spec, CONFIG, None, resolved)["spec"]["template"]["metadata"]["annotations"]):
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        assert 4 * 32768 < size < 256 * 1024, size
        assert yaml.safe_load(annotations[builders.CONFIG_ANNOTATION])["system_prompt"] == "\x01" * 32768
