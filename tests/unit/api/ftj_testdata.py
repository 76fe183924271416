"""Shared data for the API, estimate and placement unit tests (imported by name: tests are not a package)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from finetune_operator import gpus

REPO = Path(__file__).resolve().parents[3]

SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
    "dataset": {"trainUri": "s3://data/train.jsonl", "maxSeqLength": 2048},
    "training": {"maxSteps": 100},
    "output": {"uri": "s3://adapters/team/"},
}

# The default local fleet, as GFD labels it (the same products as localcluster/fleet.yaml).
FLEET = {
    "nodes": [
        {"name": "gpu-t4-0", "gpu": {"product": "Tesla-T4", "memoryMiB": 15360, "count": 1, "computeMajor": 7, "computeMinor": 5, "family": "turing"}},
        {"name": "gpu-a10g-0", "gpu": {"product": "NVIDIA-A10G", "memoryMiB": 23028, "count": 1, "computeMajor": 8, "computeMinor": 6, "family": "ampere"}},
        {"name": "gpu-a100-40gb-0", "gpu": {"product": "NVIDIA-A100-SXM4-40GB", "memoryMiB": 40960, "count": 1, "computeMajor": 8, "computeMinor": 0, "family": "ampere"}},
        {"name": "gpu-h100-80gb-0", "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "count": 1, "computeMajor": 9, "computeMinor": 0, "family": "hopper"}},
        {"name": "cpu-0"},
    ]
}


def make_spec(**sections: Any) -> dict[str, Any]:
    """SPEC with some top-level sections replaced (a value of None deletes the key)."""
    spec = copy.deepcopy(SPEC)
    for key, value in sections.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = copy.deepcopy(value)
    return spec



def load_example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "examples" / name).read_text()))
