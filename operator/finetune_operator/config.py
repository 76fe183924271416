"""The operator's own configuration: environment and an optional YAML file (a mounted ConfigMap).

Validated once at start-up; a bad value stops the operator with a message naming the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
CONFIG_FILE_ENV = "FINETUNE_OPERATOR_CONFIG"
ENV_PREFIX = "FINETUNE_OPERATOR_"

_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")


class ConfigError(Exception):
    """The operator configuration is unusable; the message names the key."""


class S3Defaults(BaseModel):
    """S3 settings a FineTuneJob inherits unless it sets its own (where allowed)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = ""
    region: str = "us-east-1"
    path_style: bool = True
    # A ConfigMap in the job's namespace holding a CA bundle, mounted into trainer pods.
    ca_bundle_configmap: str = ""
    ca_bundle_key: str = "ca.crt"
    # Endpoints a job may name; the configured default is always allowed. Empty: only the default.
    allowed_endpoints: list[str] = Field(default_factory=list)


# --- network reach and storage retries (issue 12) ------------------------------------------


class NetworkSettings(BaseModel):
    """Where trainer and inspection pods may connect, beyond the S3 endpoint allow-list."""

    model_config = ConfigDict(extra="forbid")

    # Hugging Face endpoint the trainer downloads hf:// models and datasets from (its HF_ENDPOINT);
    # empty: huggingface.co. Set by the platform only: a job cannot choose it.
    hf_endpoint: str = Field(default="", pattern=r"^(https?://[^\s]+)?$")
    # Hosts (names, addresses or CIDRs) an endpoint may name although they are link-local or a cloud
    # metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254); refused otherwise. Private ranges
    # need no entry.
    allowed_link_local_hosts: list[str] = Field(default_factory=list)


class S3Retries(BaseModel):
    """boto3's retry and timeout settings for the trainer's S3 client (botocore Config)."""

    model_config = ConfigDict(extra="forbid")

    # botocore retry modes: standard (exponential backoff with jitter, the default) or adaptive.
    mode: Literal["standard", "adaptive", "legacy"] = "standard"
    # Attempts per request, the first included; standard mode's waits (full jitter, at most 20 s
    # each) add up to about a minute on average for 10 attempts; past them the trainer exits 14.
    max_attempts: int = Field(default=10, ge=1, le=50)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)


class OperatorConfig(BaseModel):
    """Everything a platform team sets when installing the operator."""

    model_config = ConfigDict(extra="forbid")

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # Images a job may name in spec.trainerImage (exact references; trainer_image always is); empty: only trainer_image.
    allowed_trainer_images: list[str] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)
    runtime_class_name: str = ""
    gpu_catalog: list[dict[str, Any]] = Field(default_factory=list)
    node_pools: list[dict[str, Any]] = Field(default_factory=list)
    # Hourly price per GPU product (GFD product or GKE/Karpenter name → decimal string, e.g.
    # "NVIDIA-L4": "0.80"); with prices the cheapest fitting product is preferred. Default: none.
    gpu_prices: dict[str, Annotated[Decimal, Field(ge=0)]] = Field(default_factory=dict)
    s3: S3Defaults = Field(default_factory=S3Defaults)
    allow_trust_remote_code: bool = False
    # Share of GPU memory kept free on top of the estimate, as a decimal string.
    vram_headroom: str = "0.10"
    # Namespaces to watch; empty means the whole cluster.
    namespaces: list[str] = Field(default_factory=list)
    max_concurrent_jobs: int = Field(default=0, ge=0)
    # Long enough for the trainer to upload a checkpoint after SIGTERM.
    termination_grace_period_seconds: int = Field(default=120, ge=10, le=3600)
    # A lost node (its kubelet stopped reporting): training pods tolerate the not-ready/unreachable
    # taints this long (Kubernetes' default is 300 s) before the taint manager evicts them ...
    node_lost_toleration_seconds: int = Field(default=60, ge=0, le=3600)
    # ... but eviction alone never completes without a kubelet, and the Job waits for the old pod
    # (podReplacementPolicy: Failed). Once the node has not been Ready this long, the operator
    # force-deletes the evicted, stuck pod so the Job starts a replacement. 0 turns the policy off.
    node_lost_force_delete_seconds: int = Field(default=120, ge=0, le=86400)
    workload_identity_annotations: dict[str, str] = Field(default_factory=dict)
    model_cache_pvc: str = ""
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    shm_size: str = "8Gi"
    inspection_cpu: str = "1"
    inspection_memory: str = "4Gi"
    health_port: int = Field(default=8080, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    lease_name: str = "finetune-operator-leader"
    lease_namespace: str = "default"
    lease_duration_seconds: int = Field(default=15, ge=5, le=300)
    # Liveness fails once the leader Lease's watch has been connected this long without an event
    # (a stalled, half-open stream); 0: four Lease durations. The leader renews every third of a
    # Lease duration, so a live watch hears from the API server at least that often.
    watch_stale_seconds: float = Field(default=0, ge=0, le=3600)
    identity: str = Field(default_factory=lambda: os.environ.get("POD_NAME") or os.uname().nodename)
    # Every unfinished job is re-planned from the watch caches this often (no API reads).
    resync_seconds: float = Field(default=10.0, gt=0)
    # Client-side API budget (client-go's QPS/burst; controller-runtime defaults to 20/30).
    api_qps: float = Field(default=20.0, gt=0, le=1000)
    api_burst: int = Field(default=30, ge=1, le=2000)
    # Progress-only status writes: each job at most every N seconds, all jobs at most P per second.
    progress_interval_seconds: float = Field(default=10.0, ge=0)
    status_writes_per_second: float = Field(default=10.0, gt=0)
    # Reconcile workers (threads taking job keys from the work queue).
    workers: int = Field(default=4, ge=1, le=64)
    # Node changes are batched this long before waiting jobs are re-planned.
    node_batch_seconds: float = Field(default=1.0, ge=0)
    # Metadata-only relist that repairs a watch cache which missed a deletion (0 disables it).
    relist_seconds: float = Field(default=300.0, ge=0)
    # --- network reach and storage retries (issue 12)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    s3_retries: S3Retries = Field(default_factory=S3Retries)

    @field_validator("watch_stale_seconds")
    @classmethod
    def _stale_after_renewals(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_duration_seconds")
        if value and lease is not None and value < lease:
            raise ValueError(
                f"must be 0 (four Lease durations) or at least lease_duration_seconds ({lease}), since the "
                f"Lease's watch hears an event only at each renewal, every third of a Lease duration (got {value:g})")
        return value

    def watch_stale_limit(self) -> float:
        """Seconds of silence on a connected watch after which liveness fails."""
        return self.watch_stale_seconds or 4.0 * self.lease_duration_seconds

    @field_validator("vram_headroom")
    @classmethod
    def _headroom(cls, value: str) -> str:
        if not _DECIMAL.match(value) or not 0 <= float(value) < 1:
            raise ValueError(f"must be a decimal string in [0, 1), e.g. '0.10' (got {value!r})")
        return value

    def allowed_endpoints(self) -> set[str]:
        """The S3 endpoints a job may use: the default plus the allow-list."""
        allowed = set(self.s3.allowed_endpoints)
        if self.s3.endpoint:
            allowed.add(self.s3.endpoint)
        return allowed


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    """Scalar overrides such as FINETUNE_OPERATOR_TRAINER_IMAGE or FINETUNE_OPERATOR_S3__ENDPOINT."""
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_FILE_ENV:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
        try:
            target[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            target[path[-1]] = raw
    return values


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(environ: dict[str, str] | None = None) -> OperatorConfig:
    """Load the configuration from the file named by FINETUNE_OPERATOR_CONFIG plus env overrides."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = env.get(CONFIG_FILE_ENV)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{CONFIG_FILE_ENV}={path}: cannot read the configuration: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded
    data = _merge(data, _from_env(env))
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid operator configuration: {problems}") from exc
