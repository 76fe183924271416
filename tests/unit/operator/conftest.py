"""Shared fixtures for the operator's pure unit tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B", "revision": "main"},
    "dataset": {"trainUri": "s3://data/chat.jsonl", "format": "messages", "maxSeqLength": 2048},
    "method": "qlora",
    "lora": {"r": 16},
    "training": {"maxSteps": 100, "microBatchSize": 1, "gradientAccumulation": 4},
    "resources": {"gpus": 1, "memory": "32Gi", "cpu": "4"},
    "output": {"uri": "s3://adapters/team/", "credentialsSecret": {"name": "s3-creds"},
               "endpoint": "http://s3.local:8333", "region": "us-east-1"},
    "runPolicy": {"backoffLimit": 3},
}


@pytest.fixture
def body() -> dict[str, Any]:
    """A FineTuneJob as kopf and the API server hand it over."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "llama-chat", "namespace": "team-a", "uid": "0f9c1d2e-aaaa-bbbb-cccc-1234567890ab",
                     "generation": 1, "resourceVersion": "100"},
        "spec": copy.deepcopy(SPEC),
    }
