"""The adapter's manifest.json: what was trained from what, how, and with what result."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .job import Prepared
    from .runstore import RunStore

MANIFEST = "adapter/manifest.json"

# SFTConfig fields recorded as the run's training hyperparameters.
HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "packing",
    "activation_checkpointing",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
)

LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "finetune-operator",
)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_gpu_memory() -> dict[str, int | None]:
    """Allocator's reserved peak and device memory in use, in bytes; null on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return {"maxMemoryReservedBytes": None, "deviceMemoryUsedBytes": None, "deviceMemoryTotalBytes": None}
    free, total = torch.cuda.mem_get_info()
    return {
        "maxMemoryReservedBytes": int(torch.cuda.max_memory_reserved()),
        "deviceMemoryUsedBytes": int(total - free),
        "deviceMemoryTotalBytes": int(total),
    }


def jsonable(value: Any) -> Any:
    """Hyperparameters as JSON (enums and dtypes as strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def build_manifest(
    cfg: Config,
    prep: Prepared,
    *,
    loss: dict[str, Any],
    quant: Any,
    lora: Any,
    world_size: int,
    results: dict[str, Any],
    checks: dict[str, Any],
    files: dict[str, str],
    adapter_dir: str,
) -> dict[str, Any]:
    """The manifest of a completed adapter: inputs with their hashes, settings, results, checks."""
    job, report = cfg.job, prep.data.report
    return {
        "jobUid": job.job_uid,
        "jobName": job.job_name,
        "jobNamespace": job.job_namespace,
        "baseModel": {"uri": prep.model.uri, "revision": prep.model.revision, "contentHash": prep.model.content_hash},
        "dataset": {
            "uri": job.dataset_uri,
            "sha256": report.sha256,
            "validationUri": job.validation_uri or None,
            "format": report.format,
            "sourceFormat": report.source_format,
            "examples": report.examples,
            "train": report.train,
            "validation": report.validation,
        },
        "systemPrompt": job.system_prompt or None,
        "lossMasking": loss["mode"],
        "lossMaskingDetails": loss,
        "chatTemplate": prep.template.to_json(),
        "hyperparameters": jsonable(
            {
                "computeDtype": cfg.model.dtype,
                "quantization": quant.to_dict() if quant is not None else None,
                "lora": {
                    "r": lora.r,
                    "lora_alpha": lora.lora_alpha,
                    "lora_dropout": lora.lora_dropout,
                    "target_modules": sorted(lora.target_modules) if lora.target_modules else None,
                    "use_dora": lora.use_dora,
                    "use_rslora": lora.use_rslora,
                },
                "training": {k: getattr(cfg.sft, k) for k in HYPERPARAMETERS if hasattr(cfg.sft, k)},
                "worldSize": world_size,
            }
        ),
        "results": results,
        "checks": checks,
        "peakGpuMemory": peak_gpu_memory(),
        "libraries": library_versions(),
        "files": files,
        "adapterSizeBytes": sum(p.stat().st_size for p in Path(adapter_dir).rglob("*") if p.is_file()),
    }


def adapter_report(store: RunStore, manifest: dict[str, Any]) -> dict[str, Any]:
    """The adapter as the operator records it in status (docs/contract.md §3): no S3 read needed there."""
    files = manifest.get("files") or {}
    return {
        "uri": store.uri("adapter/"),
        "manifestUri": store.uri(MANIFEST),
        "sha256": files.get("adapter_model.safetensors"),
        "sizeBytes": manifest.get("adapterSizeBytes"),
    }


def activation_checkpointing_on(model: Any) -> bool:
    """Whether the (PEFT-wrapped) model runs with activation checkpointing."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers 5 renamed the property (the old name warns).
    on = getattr(inner, "is_activation_checkpointing", None)
    return bool(on if on is not None else getattr(inner, "is_gradient_checkpointing", False))
