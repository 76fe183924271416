"""Pure builders: a FineTuneJob (+ the placement decision) → the objects the operator creates.

Nothing here talks to the API; every function returns plain dicts that the `k8s` module sends.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from finetune_operator import naming
from finetune_operator.arch import EXPERT_PARAMETERS
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

TRAINER_CONFIG_PATH = "/etc/finetune/train.yaml"
INSPECT_CONFIG_PATH = "/etc/finetune/inspect.yaml"
# On the inspection pod and the training Job's pod template; the pod's downward-API volume
# turns the first into the file at *_CONFIG_PATH.
CONFIG_ANNOTATION = "finetune.dev/trainer-config"
CA_BUNDLE_DIR = "/etc/finetune/ca"
TERMINATION_LOG = "/dev/termination-log"

# Exit codes agreed with the trainer (docs/contract.md).
EXIT_DATA_ERROR = 10
EXIT_CONFIG_ERROR = 11
EXIT_CUDA_OOM = 12
EXIT_INTERRUPTED = 13
EXIT_STORAGE_RETRYABLE = 14
PERMANENT_EXIT_CODES = (EXIT_DATA_ERROR, EXIT_CONFIG_ERROR, EXIT_CUDA_OOM)

# The trainer keys its checkpoint and adapter writes by this attempt identity (the pod UID).
ATTEMPT_ENV = "FINETUNE_ATTEMPT_ID"

# Kueue owns `suspend` of Jobs carrying this label.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


# spec.quantization.computeDtype → the trainer's `dtype` (TRL's ModelConfig.dtype values).
TRAINER_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}


def spec_hash(spec: dict[str, Any]) -> str:
    """Hash of everything in the spec that shapes the run (all but runPolicy.suspend)."""
    material = json.loads(json.dumps(spec))
    (material.get("runPolicy") or {}).pop("suspend", None)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def trainer_image(spec: FineTuneJobSpec, config: OperatorConfig) -> str:
    """The job's own trainer image (policy_errors checked it against the allow-list) or the operator's."""
    return spec.trainer_image or config.trainer_image


def s3_endpoint(spec: FineTuneJobSpec, config: OperatorConfig) -> str:
    return spec.output.endpoint or config.s3.endpoint


def trainer_config(
    spec: FineTuneJobSpec,
    meta: dict[str, Any],
    config: OperatorConfig,
    resolved: dict[str, Any] | None,
) -> dict[str, Any]:
    """The flat trainer configuration (TRL ModelConfig + SFTConfig + our JobArguments).

    `resolved` is the placement's resolved values (dtype, micro-batch, accumulation, alpha,
    target modules); None renders the inspection variant, which needs no GPU decisions.
    """
    name, uid = meta["name"], meta["uid"]
    quant = spec.effective_quantization()
    bits = spec.quantization_bits()
    resolved = resolved or {}
    target_modules = resolved.get("targetModules") or list(spec.lora.target_modules)
    if target_modules == ["auto"]:
        target_modules = None  # inspection only: placement resolves [auto] (catalog.AUTO_TARGETS) before training
    # fused MoE expert parameters are not modules: PEFT adapts them through target_parameters
    target_parameters = [t for t in target_modules or () if t in EXPERT_PARAMETERS] or None
    if target_modules and target_parameters:
        target_modules = [t for t in target_modules if t not in EXPERT_PARAMETERS]
    cfg: dict[str, Any] = {
        # --- TRL ModelConfig
        "model_name_or_path": spec.base_model.uri,
        "model_revision": spec.base_model.revision or "main",
        "attn_implementation": spec.training.attention_implementation,
        "use_peft": True,
        "lora_r": spec.lora.r,
        "lora_alpha": resolved.get("loraAlpha") or spec.lora.alpha or 2 * spec.lora.r,
        "lora_dropout": float(spec.lora.dropout),
        "lora_target_modules": target_modules if target_modules != ["all-linear"] else "all-linear",
        "use_rslora": spec.lora.use_rslora,
        "use_dora": spec.lora.use_dora,
        "load_in_4bit": bits == 4,
        "load_in_8bit": bits == 8,
        "bnb_4bit_quant_type": quant.type,
        "use_bnb_nested_quant": quant.double_quant,
        # --- TRL SFTConfig
        "output_dir": "/tmp/finetune/output",
        "max_length": spec.dataset.max_seq_length,
        "packing": spec.dataset.packing,
        "per_device_train_batch_size": int(resolved.get("microBatchSize") or _micro(spec)),
        "gradient_accumulation_steps": int(resolved.get("gradientAccumulation") or _accumulation(spec)),
        "learning_rate": float(spec.training.learning_rate),
        "lr_scheduler_type": spec.training.scheduler,
        # transformers 5: a float in [0, 1) in warmup_steps is the ratio of total steps.
        "warmup_steps": float(spec.training.warmup_ratio),
        "weight_decay": float(spec.training.weight_decay),
        # transformers 5 renamed gradient_checkpointing (deprecated) to activation_checkpointing.
        "activation_checkpointing": spec.training.gradient_checkpointing,
        "seed": spec.training.seed,
        "num_train_epochs": float(spec.training.epochs or 1),
        "max_steps": spec.training.max_steps or -1,
        "report_to": ["wandb"] if spec.tracking and spec.tracking.wandb else [],
        # --- our JobArguments
        "job_uid": uid,
        "job_name": name,
        "job_namespace": meta["namespace"],
        "base_model_uri": spec.base_model.uri,
        "trust_remote_code": spec.base_model.trust_remote_code,
        "dataset_uri": spec.dataset.train_uri,
        "validation_uri": spec.dataset.validation_uri or "",
        "validation_split": spec.dataset.validation_split,
        "data_format": spec.dataset.format,
        "system_prompt": spec.dataset.system_prompt or "",
        "output_uri": spec.output.uri,
        "s3_endpoint": s3_endpoint(spec, config),
        "s3_region": spec.output.region or config.s3.region,
        "s3_path_style": config.s3.path_style,
        "s3_ca_bundle": f"{CA_BUNDLE_DIR}/{config.s3.ca_bundle_key}" if config.s3.ca_bundle_configmap else "",
        "s3_retry_mode": config.s3_retries.mode,
        "s3_max_attempts": config.s3_retries.max_attempts,
        "s3_connect_timeout_seconds": config.s3_retries.connect_timeout_seconds,
        "s3_read_timeout_seconds": config.s3_retries.read_timeout_seconds,
        # ModelConfig.dtype: the base model's compute dtype (TRL's names; auto: resolved on the node).
        "dtype": TRAINER_DTYPES[resolved.get("computeDtype") or "fp32"],
        "checkpoint_interval_steps": spec.training.checkpoint.every_steps or 0,
        "checkpoint_interval_minutes": spec.training.checkpoint.every_minutes,
        "keep_checkpoints": spec.training.checkpoint.keep,
        "progress_configmap": naming.progress(name) if resolved else "",
        "train_on_inputs": spec.dataset.train_on_inputs,
        "expect_gpus": spec.resources.gpus if resolved else 0,  # the trainer fails at once when CUDA sees fewer
        "progress_interval_seconds": 5,
        "wandb_project": spec.tracking.wandb.project if spec.tracking and spec.tracking.wandb else "",
    }
    if target_parameters:
        cfg["lora_target_parameters"] = target_parameters
    if spec.training.eval_steps:
        cfg["eval_strategy"] = "steps"
        cfg["eval_steps"] = spec.training.eval_steps
    return cfg


def _micro(spec: FineTuneJobSpec) -> int:
    mbs = spec.training.micro_batch_size
    return 1 if mbs == "auto" else int(mbs)


def _accumulation(spec: FineTuneJobSpec) -> int:
    if spec.training.gradient_accumulation:
        return spec.training.gradient_accumulation
    if spec.training.batch_size:
        return max(1, spec.training.batch_size // _micro(spec))
    return 1


def _base(kind: str, api_version: str, name: str, body: dict[str, Any], component: str) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": naming.labels(meta["name"], meta["uid"], component),
            "ownerReferences": [naming.owner_reference(body)],
        },
    }


# libyaml's emitter when PyYAML has it (its wheels do): the same document as the pure-Python
# SafeDumper, several times cheaper, and every placement dumps one (bench/estimate_bench.py).
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: dict[str, Any]) -> str:
    """``data`` as a YAML document with sorted keys, for the trainer to read with ``safe_load``."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=True)


def rendered_config(
    body: dict[str, Any], spec: FineTuneJobSpec, config: OperatorConfig, resolved: dict[str, Any] | None
) -> str:
    """The trainer configuration file: inspect.yaml (resolved None) or train.yaml."""
    return dump_yaml(trainer_config(spec, body["metadata"], config, resolved))


def config_annotations(
    body: dict[str, Any], spec: FineTuneJobSpec, config: OperatorConfig, resolved: dict[str, Any] | None
) -> dict[str, str]:
    """The annotations a trainer pod carries: its configuration file and the spec hash it came from.

    The pod reads the file through a downward-API volume (`_pod_spec`), so the configuration
    travels inside the pod object itself: no ConfigMap to create first (one write less on each
    create step), none that can be missing or changed, and a Job's pod template is immutable, so
    every attempt of a run reads exactly the values its first one used.
    """
    return {CONFIG_ANNOTATION: rendered_config(body, spec, config, resolved),
            naming.SPEC_HASH_ANNOTATION: spec_hash(body["spec"])}


def progress_configmap(body: dict[str, Any]) -> dict[str, Any]:
    """The empty progress ConfigMap the trainer patches (it may not create objects)."""
    cm = _base("ConfigMap", "v1", naming.progress(body["metadata"]["name"]), body, "progress")
    cm["data"] = {"progress.json": "{}"}
    return cm


def service_account(body: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    sa = _base("ServiceAccount", "v1", naming.service_account(body["metadata"]["name"]), body, "trainer")
    if config.workload_identity_annotations:
        sa["metadata"]["annotations"] = dict(config.workload_identity_annotations)
    return sa


def role(body: dict[str, Any]) -> dict[str, Any]:
    """The trainer's only right: update its own progress ConfigMap."""
    name = body["metadata"]["name"]
    r = _base("Role", "rbac.authorization.k8s.io/v1", naming.service_account(name), body, "trainer")
    r["rules"] = [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [naming.progress(name)],
         "verbs": ["get", "patch", "update"]}
    ]
    return r


def role_binding(body: dict[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    sa = naming.service_account(name)
    rb = _base("RoleBinding", "rbac.authorization.k8s.io/v1", sa, body, "trainer")
    rb["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa}
    rb["subjects"] = [{"kind": "ServiceAccount", "name": sa, "namespace": body["metadata"]["namespace"]}]
    return rb


def _env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Credentials only by reference: the operator never reads Secret contents."""
    env: list[dict[str, Any]] = [
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "FINETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    creds = spec.output.credentials_secret
    if creds is not None:
        env.append({"name": "AWS_ACCESS_KEY_ID",
                    "valueFrom": {"secretKeyRef": {"name": creds.name, "key": creds.access_key_id_key}}})
        env.append({"name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {"secretKeyRef": {"name": creds.name, "key": creds.secret_access_key_key}}})
    hf = spec.base_model.credentials_secret
    if hf is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf.name, "key": hf.key}}})
    if spec.tracking and spec.tracking.wandb:
        ref = spec.tracking.wandb.api_key_secret
        env.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        env.append({"name": "WANDB_PROJECT", "value": spec.tracking.wandb.project})
        if spec.tracking.wandb.entity:
            env.append({"name": "WANDB_ENTITY", "value": spec.tracking.wandb.entity})
    return env


_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod_spec(
    body: dict[str, Any], spec: FineTuneJobSpec, config: OperatorConfig, *, mode: str,
    node_affinity: dict[str, Any] | None,
) -> dict[str, Any]:
    """The pod template shared by inspection (mode "inspect") and training (mode "train")."""
    name = body["metadata"]["name"]
    config_path = INSPECT_CONFIG_PATH if mode == "inspect" else TRAINER_CONFIG_PATH
    args = (["inspect"] if mode == "inspect" else []) + ["--config", config_path]
    res = spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if mode == "train":
        for key, value in (("cpu", res.cpu), ("memory", res.memory), ("ephemeral-storage", res.ephemeral_storage)):
            if value is not None:
                requests[key] = str(value)
        if res.memory is not None:
            limits["memory"] = str(res.memory)
        if res.gpus:
            requests["nvidia.com/gpu"] = str(res.gpus)
            limits["nvidia.com/gpu"] = str(res.gpus)
    else:
        requests = {"cpu": config.inspection_cpu, "memory": config.inspection_memory}
        limits = {"memory": config.inspection_memory}
    mounts = [
        {"name": "trainer-config", "mountPath": "/etc/finetune", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "trainer-config", "downwardAPI": {"items": [{
            "path": config_path.rsplit("/", 1)[1],
            "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    if mode == "train":
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}})
    if config.s3.ca_bundle_configmap:
        mounts.append({"name": "s3-ca", "mountPath": CA_BUNDLE_DIR, "readOnly": True})
        volumes.append({"name": "s3-ca", "configMap": {"name": config.s3.ca_bundle_configmap}})
    if config.model_cache_pvc:
        mounts.append({"name": "model-cache", "mountPath": "/cache/models"})
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": config.model_cache_pvc}})
    env = _env(spec) + [
        # The attempt identity that fences a replaced trainer off from the run's S3 prefix.
        {"name": ATTEMPT_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "FINETUNE_CACHE_DIR", "value": "/cache/models"},
    ]
    if config.network.hf_endpoint:
        # the Hub the trainer may download from is the platform's choice, never the job's
        env.append({"name": "HF_ENDPOINT", "value": config.network.hf_endpoint})
    container = {
        "name": "trainer",
        "image": trainer_image(spec, config),
        "imagePullPolicy": "IfNotPresent",
        "command": ["finetune-trainer"],
        "args": args,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": dict(_SECURITY_CONTEXT),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        # The trainer image's own non-root user (trainer_image/Dockerfile: USER 10001:10001).
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": config.termination_grace_period_seconds,
    }
    if mode == "train":
        pod["serviceAccountName"] = naming.service_account(name)
        pod["automountServiceAccountToken"] = True
        tolerations = list(config.gpu_tolerations) if res.gpus else []
        tolerations += [t.model_dump(exclude_none=True) for t in res.tolerations or []]
        tolerations += node_lost_tolerations(config, tolerations)
        if tolerations:
            pod["tolerations"] = tolerations
        if res.node_selector:
            pod["nodeSelector"] = dict(res.node_selector)
        if node_affinity:
            pod["affinity"] = {"nodeAffinity": node_affinity}
        if res.priority_class_name:
            pod["priorityClassName"] = res.priority_class_name
    else:
        # Inspection needs no API access and no GPU; prefer nodes without GPUs.
        pod["automountServiceAccountToken"] = False
        pod["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "preference": {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "DoesNotExist"}]},
        }]}}
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    if config.runtime_class_name and mode == "train":
        pod["runtimeClassName"] = config.runtime_class_name
    return pod


NODE_LOST_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def node_lost_tolerations(config: OperatorConfig, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A shorter wait than Kubernetes' default 300 s on a node that stopped reporting.

    Set explicitly, the DefaultTolerationSeconds admission plugin leaves them alone; a job's own
    toleration for the same taint (spec.resources.tolerations) wins.
    """
    own = {t.get("key") for t in existing}
    return [{"key": key, "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": config.node_lost_toleration_seconds}
            for key in NODE_LOST_TAINTS if key not in own]


def inspection_pod(body: dict[str, Any], spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    """A CPU-only pod running `finetune-trainer inspect` with the job's credentials."""
    pod = _base("Pod", "v1", naming.inspection_pod(body["metadata"]["name"]), body, "inspection")
    pod["metadata"]["annotations"] = config_annotations(body, spec, config, None)
    pod["spec"] = _pod_spec(body, spec, config, mode="inspect", node_affinity=None)
    return pod


def training_job(
    body: dict[str, Any], spec: FineTuneJobSpec, config: OperatorConfig, node_affinity: dict[str, Any] | None,
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """The batch/v1 Job running the trainer on the GPUs with the placement's `resolved` values."""
    name = body["metadata"]["name"]
    job = _base("Job", "batch/v1", naming.training_job(name), body, "training")
    annotations = config_annotations(body, spec, config, resolved)
    job["metadata"]["annotations"] = {naming.SPEC_HASH_ANNOTATION: annotations[naming.SPEC_HASH_ANNOTATION]}
    policy = spec.run_policy
    template_labels = naming.labels(name, body["metadata"]["uid"], "training")
    kueue = spec.resources.kueue_queue
    if kueue:
        job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = kueue
    job_spec: dict[str, Any] = {
        "parallelism": 1,
        "completions": 1,
        "backoffLimit": policy.backoff_limit,
        # A replacement starts only once the old pod is gone: two trainers never share a prefix.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                 "values": [EXIT_INTERRUPTED]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                  "values": list(PERMANENT_EXIT_CODES)}},
        ]},
        # Kueue owns suspend of queued Jobs; otherwise it follows runPolicy.suspend.
        "suspend": True if kueue else policy.suspend,
        "template": {
            "metadata": {"labels": template_labels, "annotations": annotations},
            "spec": _pod_spec(body, spec, config, mode="train", node_affinity=node_affinity),
        },
    }
    if policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    job["spec"] = job_spec
    return job
