"""The spec models: defaults, decimal strings, and the Python mirror of every CEL rule."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from finetune_operator import api

from ftj_testdata import SPEC, make_spec


def test_minimal_spec_gets_defaults() -> None:
    spec = api.FineTuneJobSpec.model_validate(SPEC)
    assert spec.method == "qlora"
    assert spec.quantization_bits() == 4
    assert spec.lora.r == 16 and spec.lora.alpha is None and spec.lora.target_modules == ["auto"]
    assert spec.lora.dropout == "0.05"
    assert spec.dataset.validation_split == "0.1"
    assert spec.training.gradient_checkpointing is True
    assert spec.training.micro_batch_size == 1
    assert spec.resources.gpus == 1
    assert spec.run_policy.suspend is False and spec.run_policy.wait_for_capacity is False
    assert spec.base_model.trust_remote_code is False


def test_camel_case_on_the_wire_and_round_trip() -> None:
    raw = make_spec(training={"maxSteps": 10, "learningRate": "0.00015", "microBatchSize": "auto", "batchSize": 8})
    spec = api.FineTuneJobSpec.model_validate(raw)
    dumped = spec.model_dump(mode="json", exclude_none=True)
    assert dumped["training"]["learningRate"] == "0.00015"
    assert dumped["baseModel"]["trustRemoteCode"] is False
    assert Decimal(spec.training.learning_rate) == Decimal("0.00015")
    assert api.FineTuneJobSpec.model_validate(dumped) == spec


def test_snake_case_names_are_accepted_in_python() -> None:
    spec = api.FineTuneJobSpec.model_validate({**SPEC, "run_policy": {"suspend": True}})
    assert spec.run_policy.suspend is True


def test_status_model_accepts_a_full_status() -> None:
    status = api.FineTuneJobStatus.model_validate({
        "observedGeneration": 1, "state": "Running",
        "conditions": [{"type": "Running", "status": "True", "reason": "PodRunning", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "progress": {"step": 3, "totalSteps": 10, "trainLoss": "1.25", "percent": 30, "etaSeconds": 12},
        "adapter": {"uri": "s3://a/b/", "sizeBytes": 10, "sha256": "a" * 64},
    })
    assert status.progress is not None and status.progress.train_loss == "1.25"


def test_errors_name_camel_case_paths() -> None:
    errors = api.spec_errors(make_spec(lora={"r": 512}))
    assert errors == ["spec.lora.r: must be ≤ 256 (got 512)"]


def test_unknown_field_is_rejected() -> None:
    assert api.spec_errors(make_spec(lora={"rank": 8})) == [
        "spec.lora.rank: unknown field; check its spelling and indentation"
    ]


def test_missing_required_field() -> None:
    assert api.spec_errors(make_spec(output=None)) == ["spec.output: required"]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("qlora needs 4-bit", {"quantization": {"bits": 8}}, "spec.quantization.bits: method qlora needs 4-bit"),
    ("lora with 4-bit", {"method": "lora", "quantization": {"bits": 4}}, "spec.quantization.bits: method lora with 4-bit"),
    ("bits not 4 or 8", {"quantization": {"bits": 3}}, "spec.quantization.bits"),
    ("r too large", {"lora": {"r": 257}}, "spec.lora.r: must be ≤ 256"),
    ("r zero", {"lora": {"r": 0}}, "spec.lora.r: must be ≥ 1"),
    ("alpha zero", {"lora": {"alpha": 0}}, "spec.lora.alpha: must be ≥ 1"),
    ("alpha negative", {"lora": {"alpha": -4}}, "spec.lora.alpha: must be ≥ 1"),
    ("empty targets", {"lora": {"targetModules": []}}, "spec.lora.targetModules: too short"),
    ("preset mixed", {"lora": {"targetModules": ["auto", "q_proj"]}}, "spec.lora.targetModules: auto and all-linear must be the only entry"),
    ("targets as a string", {"lora": {"targetModules": "all-linear"}}, "spec.lora.targetModules: must be a list"),
    ("dropout ≥ 1", {"lora": {"dropout": "1.5"}}, "spec.lora.dropout"),
    ("dropout float", {"lora": {"dropout": 0.1}}, "spec.lora.dropout"),
    ("neither epochs nor steps", {"training": {}}, "spec.training.epochs: set exactly one of epochs and maxSteps"),
    ("both epochs and steps", {"training": {"epochs": 1, "maxSteps": 5}}, "spec.training.epochs: set exactly one"),
    ("auto without batchSize", {"training": {"maxSteps": 5, "microBatchSize": "auto"}}, "spec.training.batchSize: microBatchSize auto needs batchSize"),
    ("accumulation and batch", {"training": {"maxSteps": 5, "gradientAccumulation": 2, "batchSize": 8}}, "spec.training.gradientAccumulation: set gradientAccumulation or batchSize"),
    ("batch not multiple", {"training": {"maxSteps": 5, "microBatchSize": 3, "batchSize": 8}}, "spec.training.batchSize: batchSize must be a multiple"),
    ("micro zero", {"training": {"maxSteps": 5, "microBatchSize": 0}}, "spec.training.microBatchSize"),
    ("micro word", {"training": {"maxSteps": 5, "microBatchSize": "max"}}, "spec.training.microBatchSize"),
    ("lr zero", {"training": {"maxSteps": 5, "learningRate": "0"}}, "spec.training.learningRate: learningRate must be"),
    ("lr not decimal", {"training": {"maxSteps": 5, "learningRate": "fast"}}, "spec.training.learningRate"),
    ("scheduler", {"training": {"maxSteps": 5, "scheduler": "cyclic"}}, "spec.training.scheduler: must be one of"),
    ("model uri", {"baseModel": {"uri": "https://huggingface.co/x/y"}}, "spec.baseModel.uri"),
    ("revision on s3", {"baseModel": {"uri": "s3://models/x/", "revision": "main"}}, "spec.baseModel.revision: revision applies only to hf://"),
    ("output without slash", {"output": {"uri": "s3://adapters/team"}}, "spec.output.uri"),
    ("dataset uri", {"dataset": {"trainUri": "ftp://x/y.jsonl"}}, "spec.dataset.trainUri"),
    ("split ≥ 1", {"dataset": {"trainUri": "s3://data/t.jsonl", "validationSplit": "1"}}, "spec.dataset.validationSplit"),
    ("format", {"dataset": {"trainUri": "s3://data/t.jsonl", "format": "csv"}}, "spec.dataset.format"),
    ("seq too short", {"dataset": {"trainUri": "s3://data/t.jsonl", "maxSeqLength": 8}}, "spec.dataset.maxSeqLength: must be ≥ 16"),
    ("gpus", {"resources": {"gpus": 17}}, "spec.resources.gpus: must be ≤ 16"),
    ("quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("method", {"method": "full"}, "spec.method: must be one of"),
    ("compute dtype", {"quantization": {"computeDtype": "fp8"}}, "spec.quantization.computeDtype"),
]


@pytest.mark.parametrize(("case", "change", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_rejected_with_the_field_path(case: str, change: dict[str, Any], expected: str) -> None:
    errors = api.spec_errors(make_spec(**change))
    assert errors, case
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize("change", [
    {"method": "lora"},
    {"method": "lora", "quantization": {"bits": 8}},
    {"quantization": {"bits": 4, "type": "fp4", "doubleQuant": False, "computeDtype": "fp16"}},
    {"lora": {"targetModules": ["all-linear"]}},
    {"lora": {"targetModules": ["q_proj", "k_proj"], "alpha": 8, "useDora": True, "useRslora": True}},
    {"training": {"epochs": 2, "microBatchSize": "auto", "batchSize": 16}},
    {"training": {"maxSteps": 2, "microBatchSize": 4, "batchSize": 16}},
    {"training": {"maxSteps": 2, "learningRate": "2e-4", "warmupRatio": "0.1", "weightDecay": "0.01"}},
    {"resources": {"gpus": 0, "cpu": 4, "memory": "16Gi", "minGpuMemory": "40Gi", "nodeSelector": {"pool": "gpu"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
    {"baseModel": {"uri": "pvc://models/llama"}},
    {"baseModel": {"uri": "/models/llama"}},
    {"dataset": {"trainUri": "hf://datasets/org/name/train.jsonl", "validationSplit": "0"}},
])
def test_valid_variants(change: dict[str, Any]) -> None:
    assert api.spec_errors(make_spec(**change)) == []


def test_every_python_rule_has_a_cel_twin_in_the_crd() -> None:
    from finetune_operator import crdgen

    text = crdgen.render()
    models = [m for m in vars(api).values() if isinstance(m, type) and issubclass(m, api._ApiModel)]
    for model in models:
        for rule in model.rules:
            assert rule.cel in text.replace("''", "'"), (model.__name__, rule.cel)
