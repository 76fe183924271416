"""Placement order, binding constraints, taints, drivers, context length and the batch in status."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from ftj_testdata import FLEET, load_example, make_spec

from finetune_operator import api, catalog, gpus, placement
from finetune_operator.arch import Architecture
from localcluster.fleet import node_objects

LLAMA_8B = catalog.lookup("hf://meta-llama/Llama-3.1-8B-Instruct")
assert LLAMA_8B is not None


def plan(spec: dict[str, Any], fleet: gpus.GpuInventory, arch: Architecture = LLAMA_8B, **kw: Any) -> placement.PlacementDecision:
    return placement.plan(api.FineTuneJobSpec.model_validate(spec), arch, fleet, **kw)


def fleet_of(*entries: dict[str, Any]) -> gpus.GpuInventory:
    return gpus.inventory_from_nodes(node_objects({"nodes": list(entries)}))


def gpu(name: str, product: str, memory: int, cc: tuple[int, int], count: int = 1, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "gpu": {"product": product, "memoryMiB": memory, "count": count,
                                                   "computeMajor": cc[0], "computeMinor": cc[1], **extra.pop("gpu", {})}}
    entry.update(extra)
    return entry


T4 = ("Tesla-T4", 15360, (7, 5))
L4 = ("NVIDIA-L4", 23034, (8, 9))
H100 = ("NVIDIA-H100-80GB-HBM3", 81559, (9, 0))


def test_phi3_mini_4k_refuses_an_8k_sequence(fleet: gpus.GpuInventory) -> None:
    phi = catalog.lookup("hf://microsoft/Phi-3-mini-4k-instruct")
    assert phi is not None
    decision = plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 8192}), fleet, phi)
    assert decision.state == "Invalid" and decision.reason == "SequenceTooLong"
    assert "spec.dataset.maxSeqLength" in decision.message and "4096" in decision.message
    long = catalog.lookup("hf://microsoft/Phi-3-mini-128k-instruct")
    assert long is not None and plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 8192}), fleet, long).state != "Invalid"


def test_the_8b_qlora_example_runs_on_four_t4s_and_one_l4() -> None:
    """The issue's fleet: the job must not wait for the L4 while T4s idle."""
    fleet = fleet_of(*(gpu(f"t4-{i}", *T4) for i in range(4)), gpu("l4-0", *L4))
    spec = load_example("llama-3.1-8b-qlora.yaml")["spec"]
    decision = plan(spec, fleet)
    assert decision.fits and set(decision.eligible_products) == {"Tesla-T4", "NVIDIA-L4"}
    assert decision.compute_dtype == "auto"
    assert {p.product: p.compute_dtype for p in decision.products} == {"Tesla-T4": "fp16", "NVIDIA-L4": "bf16"}
    pinned = plan({**spec, "quantization": {"computeDtype": "bf16"}}, fleet)
    assert pinned.eligible_products == ["NVIDIA-L4"] and pinned.compute_dtype == "bf16"


def test_without_prices_the_smallest_fitting_gpu_comes_first_with_a_preferred_affinity(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(), fleet)
    assert decision.eligible_products == sorted(decision.eligible_products,
                                                key=lambda n: next(p.usable_bytes for p in decision.products if p.product == n))
    affinity = decision.node_affinity or {}
    required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert set(required["values"]) == set(decision.eligible_products)  # never waits for one product
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    weights = [(t["preference"]["matchExpressions"][0]["values"][0], t["weight"]) for t in preferred]
    assert [n for n, _ in weights] == decision.eligible_products
    assert [w for _, w in weights] == sorted((w for _, w in weights), reverse=True) and weights[0][1] == 100
    assert all(1 <= w <= 100 for _, w in weights)


def test_with_prices_the_cheapest_fitting_gpu_is_preferred(fleet: gpus.GpuInventory) -> None:
    prices = {"NVIDIA-H100-80GB-HBM3": "2.10", "NVIDIA-A100-SXM4-40GB": "3.00", "NVIDIA-A10G": "1.20"}
    decision = plan(make_spec(), fleet, gpu_prices=prices)
    fitting = [p.product for p in decision.products if p.fits]
    # priced products by price, then the unpriced (T4) after them
    assert decision.eligible_products == sorted(
        fitting, key=lambda n: (n not in prices, Decimal(prices.get(n, "0"))))
    assert decision.eligible_products[0] == "NVIDIA-A10G"
    assert next(p for p in decision.products if p.product == "NVIDIA-A10G").hourly_price == Decimal("1.20")
    first = (decision.node_affinity or {})["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert first["weight"] == 100 and first["preference"]["matchExpressions"][0]["values"] == ["NVIDIA-A10G"]
    assert "cheapest first" in decision.message


def test_gpu_count_is_named_when_no_node_has_enough_gpus(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(resources={"gpus": 8}), fleet)
    assert decision.state == "Unschedulable"
    assert decision.message.startswith("no node has 8 GPUs") and "memory" not in decision.message.split("(")[0]
    assert decision.suggestions[0].startswith("set resources.gpus: 1")
    assert plan(make_spec(resources={"gpus": 1}), fleet).fits


def test_min_gpu_memory_above_what_the_h100_reports_is_named() -> None:
    fleet = fleet_of(gpu("h100-0", *H100))
    decision = plan(make_spec(resources={"minGpuMemory": "80Gi"}), fleet)
    assert decision.message.startswith("resources.minGpuMemory 80Gi is more than the GPUs report")
    assert "79.6Gi" in decision.message
    fix = decision.suggestions[0]
    assert fix.startswith("set resources.minGpuMemory: 79Gi")
    assert plan(make_spec(resources={"minGpuMemory": "79Gi"}), fleet).fits


def test_bf16_on_t4s_only_suggests_auto() -> None:
    fleet = fleet_of(gpu("t4-0", *T4), gpu("t4-1", *T4))
    spec = make_spec(quantization={"computeDtype": "bf16"}, dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 512})
    decision = plan(spec, fleet)
    assert decision.message.startswith("quantization.computeDtype bf16 needs compute capability ≥ 8.0")
    assert decision.suggestions[0].startswith("set quantization.computeDtype: auto (fp16 on Tesla-T4")
    assert plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 512}), fleet).fits


def test_memory_is_named_only_when_memory_binds(fleet: gpus.GpuInventory) -> None:
    seventy = catalog.lookup("hf://meta-llama/Llama-3.1-70B")
    assert seventy is not None
    decision = plan(make_spec(method="lora"), fleet, seventy)
    assert decision.message.startswith("no GPU has enough memory")


def test_nodes_with_untolerated_taints_are_not_counted() -> None:
    reserved = {"key": "team", "value": "research", "effect": "NoSchedule"}
    fleet = fleet_of(gpu("h100-0", *H100, taints=[reserved]), gpu("t4-0", *T4))
    decision = plan(make_spec(), fleet)
    assert "NVIDIA-H100-80GB-HBM3" not in decision.eligible_products
    # the GPU operator's own taint is tolerated by the operator's default gpuTolerations
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert plan(make_spec(), fleet_of(gpu("h100-0", *H100, taints=[gpu_taint])), ).fits
    only = plan(make_spec(), fleet_of(gpu("h100-0", *H100, taints=[reserved])))
    assert not only.fits and "taints the job does not tolerate" in only.message and "team=research:NoSchedule" in only.message
    assert "resources.tolerations" in only.suggestions[0]
    tolerated = make_spec(resources={"tolerations": [{"key": "team", "operator": "Equal", "value": "research", "effect": "NoSchedule"}]})
    assert plan(tolerated, fleet_of(gpu("h100-0", *H100, taints=[reserved]))).fits
    prefer = {"key": "team", "value": "research", "effect": "PreferNoSchedule"}
    assert plan(make_spec(), fleet_of(gpu("h100-0", *H100, taints=[prefer]))).fits  # a preference never blocks


def test_one_inventory_shared_by_jobs_of_different_tolerations_and_selectors_decides_as_a_fresh_one() -> None:
    """The operator keeps one inventory per node change and placement keeps its node filter per
    (tolerations, node selector) on it: a job must never be placed by another job's filter."""
    reserved = {"key": "team", "value": "research", "effect": "NoSchedule"}
    entries = [gpu("h100-0", *H100, taints=[reserved]), gpu("t4-0", *T4, labels={"pool": "cheap"}),
               gpu("l4-0", *L4, labels={"pool": "mid"})]
    tolerant = make_spec(resources={"tolerations": [{"key": "team", "operator": "Exists"}]})
    cheap = make_spec(resources={"nodeSelector": {"pool": "cheap"}})
    jobs = [make_spec(), tolerant, cheap, tolerant, make_spec(), cheap]
    shared = fleet_of(*entries)
    for job in jobs:
        assert plan(job, shared).to_dict() == plan(job, fleet_of(*entries)).to_dict()
    assert set(plan(tolerant, shared).eligible_products) == {"Tesla-T4", "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3"}
    assert set(plan(make_spec(), shared).eligible_products) == {"Tesla-T4", "NVIDIA-L4"}
    assert plan(cheap, shared).eligible_products == ["Tesla-T4"]


def test_tolerates_follows_core_v1_semantics() -> None:
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert placement.tolerates([{"operator": "Exists"}], taint)
    assert placement.tolerates([{"key": "k", "operator": "Exists"}], taint)
    assert placement.tolerates([{"key": "k", "value": "v"}], taint)
    assert not placement.tolerates([{"key": "k", "value": "w"}], taint)
    assert not placement.tolerates([{"key": "k", "operator": "Exists", "effect": "NoExecute"}], taint)


def test_driver_older_than_580_is_not_placed_and_unlabelled_nodes_warn() -> None:
    old = gpu("h100-old", *H100, gpu={"driverMajor": 550})
    new = gpu("h100-new", *H100, gpu={"driverMajor": 580})
    unlabelled = gpu("t4-0", *T4)
    decision = plan(make_spec(), fleet_of(old, new))
    assert decision.fits and decision.warnings == []
    only_old = plan(make_spec(), fleet_of(old))
    assert not only_old.fits and "driver" in only_old.message and "580" in only_old.message and "550" in only_old.message
    warned = plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 512}), fleet_of(unlabelled))
    assert warned.fits and "t4-0" in warned.warnings[0] and "driver" in warned.warnings[0]
    assert warned.status_fields()["placement"]["warnings"] == warned.warnings
    api.FineTuneJobStatus.model_validate(warned.status_fields())
    # the deprecated label is read when the new one is absent
    node = node_objects({"nodes": [gpu("x", *H100)]})[0]
    node["metadata"]["labels"][gpus.GFD_DRIVER_MAJOR_OLD] = "535"
    parsed, _ = gpus.node_from_object(node)
    assert parsed is not None and parsed.driver_major == 535


def test_effective_batch_size_multiplies_by_the_gpus() -> None:
    fleet = fleet_of(gpu("h100x4", *H100, count=4))
    decision = plan(make_spec(resources={"gpus": 4}, training={"maxSteps": 10, "microBatchSize": 4, "gradientAccumulation": 4}), fleet)
    assert decision.fits and decision.status_fields()["resolved"]["effectiveBatchSize"] == 64


def test_flash_attention_2_is_refused_in_the_api() -> None:
    errors = api.spec_errors(make_spec(training={"maxSteps": 1, "attentionImplementation": "flash_attention_2"}))
    assert errors == [
        "spec.training.attentionImplementation: attentionImplementation flash_attention_2 is not available: the trainer "
        "image has no flash-attn package; use sdpa (PyTorch's fused attention, which also avoids the quadratic attention matrix)"
    ]


def test_status_fields_carry_every_new_resolved_field(fleet: gpus.GpuInventory) -> None:
    fleet2 = copy.deepcopy(FLEET)
    assert fleet2  # the shared fleet is untouched by the tests above
    decision = plan(make_spec(), fleet)
    status = api.FineTuneJobStatus.model_validate(decision.status_fields())
    assert status.resolved is not None and status.resolved.compute_dtype in ("bf16", "fp16", "auto")


@pytest.mark.parametrize("example", ["llama-3.1-8b-qlora.yaml", "phi-3-mini-lora-t4.yaml", "llama-3.3-70b-qlora.yaml"])
def test_examples_are_valid_for_the_api(example: str) -> None:
    assert api.spec_errors(load_example(example)["spec"]) == []
