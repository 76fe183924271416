"""GPU inventory from Node labels (GFD, GKE, Karpenter), pools, MIG and time-slicing."""

from __future__ import annotations

from typing import Any

from finetune_operator import gpus
from localcluster.fleet import node_objects


def node(name: str, labels: dict[str, str], allocatable: str | None = None, **spec: Any) -> dict[str, Any]:
    status = {"allocatable": {"nvidia.com/gpu": allocatable}} if allocatable is not None else {}
    return {"metadata": {"name": name, "labels": labels}, "spec": spec, "status": status}


GFD_A100 = {
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/gpu.memory": "40960",
    "nvidia.com/gpu.count": "8", "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "0",
    "nvidia.com/gpu.family": "ampere",
}


def test_gfd_labels() -> None:
    inv = gpus.inventory_from_nodes([node("a", GFD_A100, "8"), node("b", GFD_A100, "4"), node("cpu", {})])
    [product] = inv.products()
    assert product.product == "NVIDIA-A100-SXM4-40GB"
    assert product.memory_mib == 40960 and product.compute_capability == (8, 0) and product.family == "ampere"
    assert product.gpus_per_node == 8 and product.node_count == 2 and product.allocatable == 12
    assert product.selectors == ((("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB"),),)
    assert inv.cpu_nodes == ("cpu",)


def test_gke_label_uses_the_catalog() -> None:
    inv = gpus.inventory_from_nodes([node("g", {"cloud.google.com/gke-accelerator": "nvidia-l4"}, "2")])
    [product] = inv.products()
    assert product.product == "NVIDIA-L4" and product.memory_mib == 23034 and product.compute_capability == (8, 9)
    assert product.selectors == ((("cloud.google.com/gke-accelerator", "nvidia-l4"),),)


def test_karpenter_labels_pick_the_variant_by_memory() -> None:
    labels = {"karpenter.k8s.aws/instance-gpu-name": "a100", "karpenter.k8s.aws/instance-gpu-memory": "81920",
              "karpenter.k8s.aws/instance-gpu-count": "8"}
    [product] = gpus.inventory_from_nodes([node("k", labels)]).products()
    assert product.product == "NVIDIA-A100-SXM4-80GB" and product.memory_mib == 81920 and product.gpus_per_node == 8


def test_mig_slice_counts_with_its_own_memory() -> None:
    labels = {**GFD_A100, "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", "nvidia.com/gpu.memory": "19968"}
    [product] = gpus.inventory_from_nodes([node("m", labels, "2")]).products()
    assert product.memory_mib == 19968 and product.compute_capability == (8, 0)
    gke = {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100", "cloud.google.com/gke-gpu-partition-size": "1g.5gb"}
    [slice_] = gpus.inventory_from_nodes([node("g", gke, "7")]).products()
    assert slice_.memory_mib == 5 * 1024 and len(slice_.selectors[0]) == 2


def test_time_sliced_gpus_are_marked_shared() -> None:
    labels = {**GFD_A100, "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-SHARED", "nvidia.com/gpu.replicas": "4"}
    [product] = gpus.inventory_from_nodes([node("t", labels, "32")]).products()
    assert product.sharing is not None and "time-slicing" in product.sharing and product.gpus_per_node == 0


def test_cordoned_and_unlabelled_gpu_nodes_are_ignored_with_a_reason() -> None:
    inv = gpus.inventory_from_nodes([node("c", GFD_A100, "8", unschedulable=True), node("u", {}, "1")])
    assert inv.products() == []
    assert any("cordoned" in r for r in inv.ignored) and any("GPU Feature Discovery" in r for r in inv.ignored)


def test_pools_count_without_nodes() -> None:
    inv = gpus.inventory_from_nodes([], pools=[{"name": "h100", "gpuProduct": "NVIDIA-H100-80GB-HBM3", "gpusPerNode": 8}])
    [product] = inv.products()
    assert product.from_pool and product.node_count == 0 and product.gpus_per_node == 8
    assert product.memory_mib == 81559 and product.compute_capability == (9, 0)


def test_node_selector_filters_nodes() -> None:
    inv = gpus.inventory_from_nodes([node("a", {**GFD_A100, "pool": "x"}, "8"), node("b", {**GFD_A100, "pool": "y"}, "2")])
    [product] = inv.products({"pool": "y"})
    assert product.nodes == ("b",) and product.gpus_per_node == 2
    assert inv.products({"pool": "z"}) == []


def test_fleet_file_format() -> None:
    fleet = {"nodes": [{"name": "t4", "gpu": {"product": "Tesla-T4", "memoryMiB": 15360, "count": 1, "computeMajor": 7, "computeMinor": 5}},
                       {"name": "cpu-0", "cpu": "8"}]}
    inv = gpus.inventory_from_nodes(node_objects(fleet))
    [product] = inv.products()
    assert product.product == "Tesla-T4" and product.compute_capability == (7, 5) and not product.supports_bf16
    assert inv.cpu_nodes == ("cpu-0",)
