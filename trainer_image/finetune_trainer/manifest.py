"""The adapter's manifest.json: what was trained from what, how, and with what result."""

from __future__ import annotations

import importlib.metadata
from typing import Any

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
