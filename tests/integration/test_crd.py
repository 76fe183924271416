"""The generated FineTuneJob CRD on the real kube-apiserver: defaults, validation, immutability.

Everything here is decided by the API server (OpenAPI schema, CEL rules, status subresource);
no operator runs. Each test uses its own namespace.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import api
from localcluster.pytest_plugin import Kubectl
from operator_env import crd  # noqa: F401 - the session fixture applying the CRD

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
    "dataset": {"trainUri": "s3://data/train.jsonl"},
    "training": {"maxSteps": 100},
    "output": {"uri": "s3://adapters/team/"},
}


def manifest(spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": name or f"j-{uuid.uuid4().hex[:8]}"}, "spec": spec}


def create(kubectl: Kubectl, namespace: str, obj: dict[str, Any], check: bool = True) -> Any:
    return kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(obj), check=check)


def with_changes(**sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    for key, value in sections.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_with_defaults_filled_in(crd: str, kubectl: Kubectl, namespace: str, path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    created = json.loads(create(kubectl, namespace, obj).stdout)
    spec = created["spec"]
    lora, training = obj["spec"].get("lora", {}), obj["spec"].get("training", {})
    # what the example leaves out, the server fills in with the documented default
    assert spec["runPolicy"]["suspend"] is False
    assert spec["lora"]["r"] == lora.get("r", 16)
    assert spec["lora"]["targetModules"] == lora.get("targetModules", ["auto"])
    assert spec["training"]["gradientCheckpointing"] is training.get("gradientCheckpointing", True)
    assert spec["training"]["checkpoint"]["everyMinutes"] == training.get("checkpoint", {}).get("everyMinutes", 30)
    # the server's defaults are exactly the models' defaults (no drift between CRD and pydantic)
    ours = api.FineTuneJobSpec.model_validate(obj["spec"]).model_dump(mode="json", exclude_none=True)
    assert spec == ours


def test_minimal_job_defaults(crd: str, kubectl: Kubectl, namespace: str) -> None:
    spec = json.loads(create(kubectl, namespace, manifest(SPEC)).stdout)["spec"]
    assert spec["method"] == "qlora" and "quantization" not in spec
    assert spec["lora"] == {"r": 16, "dropout": "0.05", "targetModules": ["auto"], "useDora": False, "useRslora": False}
    assert spec["dataset"]["validationSplit"] == "0.1" and spec["dataset"]["maxSeqLength"] == 2048
    assert spec["training"]["microBatchSize"] == 1 and spec["training"]["learningRate"] == "2e-4"
    assert spec["resources"] == {"gpus": 1}
    assert spec["baseModel"]["trustRemoteCode"] is False


# (name, spec, field path the API server's message must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("qlora with 8-bit", with_changes(quantization={"bits": 8}), "spec.quantization.bits"),
    ("lora with 4-bit", with_changes(method="lora", quantization={"bits": 4}), "spec.quantization.bits"),
    ("bits 3", with_changes(quantization={"bits": 3}), "spec.quantization.bits"),
    ("r too large", with_changes(lora={"r": 512}), "spec.lora.r"),
    ("r zero", with_changes(lora={"r": 0}), "spec.lora.r"),
    ("alpha zero", with_changes(lora={"alpha": 0}), "spec.lora.alpha"),
    ("empty targets", with_changes(lora={"targetModules": []}), "spec.lora.targetModules"),
    ("preset mixed", with_changes(lora={"targetModules": ["all-linear", "q_proj"]}), "spec.lora.targetModules"),
    ("targets as a string", with_changes(lora={"targetModules": "all-linear"}), "spec.lora.targetModules"),
    ("dropout ≥ 1", with_changes(lora={"dropout": "1.5"}), "spec.lora.dropout"),
    ("dropout as a float", with_changes(lora={"dropout": 0.1}), "spec.lora.dropout"),
    ("neither epochs nor steps", with_changes(training={}), "spec.training.epochs"),
    ("epochs and steps", with_changes(training={"epochs": 1, "maxSteps": 5}), "spec.training.epochs"),
    ("auto without batchSize", with_changes(training={"maxSteps": 5, "microBatchSize": "auto"}), "spec.training.batchSize"),
    ("accumulation and batch", with_changes(training={"maxSteps": 5, "gradientAccumulation": 2, "batchSize": 8}), "spec.training.gradientAccumulation"),
    ("batch not a multiple", with_changes(training={"maxSteps": 5, "microBatchSize": 3, "batchSize": 8}), "spec.training.batchSize"),
    ("micro-batch word", with_changes(training={"maxSteps": 5, "microBatchSize": "max"}), "spec.training.microBatchSize"),
    ("micro-batch zero", with_changes(training={"maxSteps": 5, "microBatchSize": 0}), "spec.training.microBatchSize"),
    ("learning rate zero", with_changes(training={"maxSteps": 5, "learningRate": "0"}), "spec.training.learningRate"),
    ("learning rate word", with_changes(training={"maxSteps": 5, "learningRate": "fast"}), "spec.training.learningRate"),
    ("scheduler", with_changes(training={"maxSteps": 5, "scheduler": "cyclic"}), "spec.training.scheduler"),
    ("model uri scheme", with_changes(baseModel={"uri": "https://huggingface.co/x/y"}), "spec.baseModel.uri"),
    ("revision on s3", with_changes(baseModel={"uri": "s3://models/x/", "revision": "main"}), "spec.baseModel.revision"),
    ("output without slash", with_changes(output={"uri": "s3://adapters/team"}), "spec.output.uri"),
    ("output missing", with_changes(output=None), "spec.output"),
    ("dataset scheme", with_changes(dataset={"trainUri": "ftp://x/y.jsonl"}), "spec.dataset.trainUri"),
    ("split 1", with_changes(dataset={"trainUri": "s3://data/t.jsonl", "validationSplit": "1"}), "spec.dataset.validationSplit"),
    ("format", with_changes(dataset={"trainUri": "s3://data/t.jsonl", "format": "csv"}), "spec.dataset.format"),
    ("sequence too short", with_changes(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 8}), "spec.dataset.maxSeqLength"),
    ("gpus", with_changes(resources={"gpus": 17}), "spec.resources.gpus"),
    ("memory quantity", with_changes(resources={"memory": "lots"}), "spec.resources.memory"),
    ("method", with_changes(method="full"), "spec.method"),
    ("compute dtype", with_changes(quantization={"computeDtype": "fp8"}), "spec.quantization.computeDtype"),
    ("unknown field", with_changes(lora={"rank": 8}), "spec.lora.rank"),
    ("trainer image with a space", with_changes(trainerImage="registry.example/fto trainer:1"), "spec.trainerImage"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_rejected_naming_the_field(
    crd: str, kubectl: Kubectl, namespace: str, case: str, spec: dict[str, Any], field: str,
) -> None:
    proc = create(kubectl, namespace, manifest(spec), check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert field in proc.stderr, f"{case}: {proc.stderr}"
    # the models reject the same manifests, so `estimate` and the operator agree with the server
    assert api.spec_errors(spec), case


def patch(kubectl: Kubectl, namespace: str, name: str, body: dict[str, Any], *extra: str) -> Any:
    return kubectl("patch", "-n", namespace, f"{api.PLURAL}.{api.GROUP}/{name}", "--type=merge",
                   "-p", json.dumps(body), *extra, check=False)


@pytest.mark.parametrize(("what", "body"), [
    ("lora.r", {"spec": {"lora": {"r": 32}}}),
    ("training", {"spec": {"training": {"maxSteps": 200}}}),
    ("baseModel", {"spec": {"baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B"}}}),
    ("method", {"spec": {"method": "lora"}}),
    ("quantization added", {"spec": {"quantization": {"bits": 4}}}),
    ("runPolicy.backoffLimit", {"spec": {"runPolicy": {"backoffLimit": 9}}}),
    ("runPolicy.activeDeadlineSeconds added", {"spec": {"runPolicy": {"activeDeadlineSeconds": 60}}}),
    ("trainerImage added", {"spec": {"trainerImage": "registry.example/fto/trainer:0.2.0"}}),
])
def test_spec_edits_are_rejected(crd: str, kubectl: Kubectl, namespace: str, what: str, body: dict[str, Any]) -> None:
    name = json.loads(create(kubectl, namespace, manifest(SPEC)).stdout)["metadata"]["name"]
    proc = patch(kubectl, namespace, name, body)
    assert proc.returncode != 0, f"{what}: edit accepted"
    assert "immutable" in proc.stderr, proc.stderr


def test_suspend_can_change(crd: str, kubectl: Kubectl, namespace: str) -> None:
    name = json.loads(create(kubectl, namespace, manifest(SPEC)).stdout)["metadata"]["name"]
    for value in (True, False):
        proc = patch(kubectl, namespace, name, {"spec": {"runPolicy": {"suspend": value}}})
        assert proc.returncode == 0, proc.stderr
        got = json.loads(kubectl("get", "-n", namespace, f"{api.PLURAL}.{api.GROUP}/{name}", "-o", "json").stdout)
        assert got["spec"]["runPolicy"]["suspend"] is value


def test_status_subresource_and_printer_columns(crd: str, kubectl: Kubectl, namespace: str) -> None:
    name = json.loads(create(kubectl, namespace, manifest(SPEC)).stdout)["metadata"]["name"]
    status = {
        "observedGeneration": 1, "state": "Running",
        "conditions": [{"type": "Running", "status": "True", "reason": "PodRunning", "message": "training",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "placement": {"eligibleProducts": ["NVIDIA-A10G"], "gpuProduct": "NVIDIA-A10G", "node": "gpu-a10g-0"},
        "progress": {"step": 30, "totalSteps": 100, "percent": 30, "trainLoss": "1.234"},
    }
    api.FineTuneJobStatus.model_validate(status)
    proc = patch(kubectl, namespace, name, {"status": status}, "--subresource=status")
    assert proc.returncode == 0, proc.stderr
    table = kubectl("get", "-n", namespace, "ftj", name).stdout.split("\n")
    assert table[0].split() == ["NAME", "STATE", "MODEL", "GPU", "PROGRESS", "LOSS", "AGE"]
    assert table[1].split()[:6] == [name, "Running", SPEC["baseModel"]["uri"], "NVIDIA-A10G", "30", "1.234"]
    bad = patch(kubectl, namespace, name, {"status": {"state": "Exploded"}}, "--subresource=status")
    assert bad.returncode != 0 and "status.state" in bad.stderr
    # the main resource ignores status writes
    patch(kubectl, namespace, name, {"status": {"state": "Failed"}})
    got = json.loads(kubectl("get", "-n", namespace, "ftj", name, "-o", "json").stdout)
    assert got["status"]["state"] == "Running"
