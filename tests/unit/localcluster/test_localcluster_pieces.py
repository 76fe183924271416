"""Pure pieces of the local cluster: fleet file, image table, $(VAR) expansion, downward API, CRD readiness."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from localcluster.fleet import FleetError, load_fleet
from localcluster.images import ImageTable
from localcluster.operator_runner import crd_established
from localcluster.podfiles import expand, field_value, resource_value


def test_default_fleet_has_the_products_the_issue_asks_for() -> None:
    nodes = {n.name: n for n in load_fleet()}
    products = {n.gpu.product: (n.gpu.memory_mib, n.gpu.compute_major, n.gpu.compute_minor) for n in nodes.values() if n.gpu}
    assert products == {
        "Tesla-T4": (15360, 7, 5),
        "NVIDIA-A10G": (23028, 8, 6),
        "NVIDIA-A100-SXM4-40GB": (40960, 8, 0),
        "NVIDIA-H100-80GB-HBM3": (81559, 9, 0),
    }
    cpu_only = [n for n in nodes.values() if n.gpu is None]
    assert cpu_only and "nvidia.com/gpu" not in cpu_only[0].capacity()
    t4 = nodes["gpu-t4-0"]
    assert t4.node_labels()["nvidia.com/gpu.family"] == "turing"
    assert t4.capacity()["nvidia.com/gpu"] == "1"


def test_fleet_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("nodes: [{name: a, gpu: {product: X, memoryMiB: 1, computeMajor: 8}}]")
    with pytest.raises(FleetError, match=r"nodes\[0\]\.gpu\.computeMinor"):
        load_fleet(bad)


def test_image_table_follows_docker_entrypoint_rules() -> None:
    table = ImageTable()
    trainer = table.resolve("ghcr.io/finetune-operator/trainer:0.1.0")
    assert trainer is not None and trainer.kind == "venv"
    assert trainer.argv([], []) == ["finetune-trainer", "--config", "/etc/finetune/train.yaml"]
    assert trainer.argv([], ["inspect"]) == ["finetune-trainer", "inspect"]
    assert trainer.argv(["python"], ["-V"]) == ["python", "-V"]
    assert trainer.path().startswith(f"{Path(sys.executable).parent}:")
    assert table.resolve("ghcr.io/finetune-operator/trainer@sha256:00") is not None
    assert table.resolve("ghcr.io/finetune-operator/trainer-other:1") is None
    busybox = table.resolve("localcluster/busybox")
    assert busybox is not None and busybox.kind == "host" and busybox.path().endswith("/bin")


def test_variable_expansion_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_downward_api_fields() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
        "spec": {"nodeName": "gpu-t4-0", "containers": [
            {"name": "main", "resources": {"limits": {"memory": "1Gi", "cpu": "1500m"}}}]},
        "status": {"podIP": "127.0.0.1"},
    }
    assert field_value(pod, "metadata.labels['app']") == "x"
    assert field_value(pod, "spec.nodeName") == "gpu-t4-0"
    assert resource_value(pod, {"resource": "limits.memory", "divisor": "1Mi"}, "main") == "1024"
    assert resource_value(pod, {"resource": "limits.cpu"}, "main") == "2"


def test_a_just_created_crd_is_not_established_yet_rather_than_an_error() -> None:
    # What the API server returns before its establishing controller has run: conditions null.
    assert crd_established({"status": {"acceptedNames": {"kind": ""}, "conditions": None, "storedVersions": ["v1"]}}) is False
    assert crd_established({}) is False
    assert crd_established({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                                      {"type": "Established", "status": "False"}]}}) is False
    assert crd_established({"status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                                      {"type": "Established", "status": "True"}]}}) is True
