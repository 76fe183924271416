"""Fit decisions on the default local fleet (T4, A10G, A100-40GB, H100-80GB, a CPU node)."""

from __future__ import annotations

from typing import Any

import pytest
from ftj_testdata import load_example, make_spec

from finetune_operator import api, catalog, gpus, placement
from finetune_operator.arch import Architecture

LLAMA_70B = catalog.lookup("hf://meta-llama/Llama-3.3-70B-Instruct")
LLAMA_8B = catalog.lookup("hf://meta-llama/Llama-3.1-8B-Instruct")
assert LLAMA_70B is not None and LLAMA_8B is not None

SEQ_2048_MICRO_1 = {"trainUri": "s3://data/t.jsonl", "maxSeqLength": 2048}


def plan(spec: dict[str, Any], fleet: gpus.GpuInventory, arch: Architecture = LLAMA_8B, **kw: Any) -> placement.PlacementDecision:
    return placement.plan(api.FineTuneJobSpec.model_validate(spec), arch, fleet, **kw)


def test_70b_lora_without_quantization_is_unschedulable_with_computed_suggestions(fleet: gpus.GpuInventory) -> None:
    spec = make_spec(method="lora", dataset=SEQ_2048_MICRO_1)
    decision = plan(spec, fleet, LLAMA_70B)
    assert decision.state == "Unschedulable" and not decision.fits and decision.reason == "Unschedulable"
    assert decision.estimate is not None and decision.estimate.breakdown["linearWeights"] > 130e9  # ≈140 GB of bf16 weights
    assert "NVIDIA-H100-80GB-HBM3" in decision.message and decision.node_affinity is None
    qlora = [s for s in decision.suggestions if "method: qlora" in s]
    assert qlora and "fits NVIDIA-H100-80GB-HBM3" in qlora[0]
    # the suggested figure is the estimate of the changed spec, not canned text
    changed = plan(make_spec(method="qlora", dataset=SEQ_2048_MICRO_1), fleet, LLAMA_70B)
    assert changed.estimate is not None and placement.gib(changed.estimate.total_bytes) in qlora[0]


def test_70b_qlora_fits_only_the_h100(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(dataset=SEQ_2048_MICRO_1), fleet, LLAMA_70B)
    assert decision.state == "Ready" and decision.fits
    assert decision.eligible_products == ["NVIDIA-H100-80GB-HBM3"]
    assert decision.node_affinity == {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]}}
    a100 = next(p for p in decision.products if p.product == "NVIDIA-A100-SXM4-40GB")
    assert not a100.fits and "usable" in a100.why_not[0]
    assert decision.compute_dtype == "bf16" and decision.lora_alpha == 32 and decision.target_modules == list(LLAMA_70B.module_names)


def test_status_fields_validate_against_the_status_model(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(dataset=SEQ_2048_MICRO_1), fleet, LLAMA_70B)
    fields = decision.status_fields()
    status = api.FineTuneJobStatus.model_validate(fields)
    assert status.estimate is not None and status.estimate.calibrated is False
    assert fields["resolved"]["microBatchSize"] == 1 and fields["placement"]["eligibleProducts"] == ["NVIDIA-H100-80GB-HBM3"]
    assert set(fields["estimate"]["breakdown"]) == {f.alias for f in api.EstimateBreakdown.model_fields.values()}


def test_wait_for_capacity_queues_instead(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(method="lora", runPolicy={"waitForCapacity": True}), fleet, LLAMA_70B)
    assert decision.state == "Queued" and decision.reason == "WaitingForCapacity" and decision.suggestions


def test_auto_micro_batch_is_the_largest_power_of_two_on_the_smallest_eligible_gpu(fleet: gpus.GpuInventory) -> None:
    spec = make_spec(training={"maxSteps": 10, "microBatchSize": "auto", "batchSize": 64})
    decision = plan(spec, fleet)
    assert decision.fits
    smallest = min((p for p in decision.products if p.fits), key=lambda p: p.usable_bytes)
    micro = decision.micro_batch_size
    assert micro & (micro - 1) == 0 and decision.gradient_accumulation * micro == 64
    bigger = plan(make_spec(training={"maxSteps": 10, "microBatchSize": micro * 2, "batchSize": 64}), fleet)
    assert any(p.product == smallest.product and not p.fits for p in bigger.products)


def test_dtype_is_per_product_and_t4_runs_fp16(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 512}), fleet)
    # the T4 is no longer excluded because bf16 GPUs also fit: each GPU runs its own dtype
    assert decision.fits and decision.eligible_products[0] == "Tesla-T4" and decision.compute_dtype == "auto"
    assert {p.product: p.compute_dtype for p in decision.products if p.fits}["Tesla-T4"] == "fp16"
    assert decision.status_fields()["resolved"]["computeDtype"] == "auto"
    t4_node = {"metadata": {"name": "t4", "labels": {gpus.GFD_PRODUCT: "Tesla-T4"}}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}}
    assert placement.dtype_on_node({"computeDtype": "auto"}, t4_node) == "fp16"
    h100_node = {"metadata": {"name": "h", "labels": {gpus.GFD_PRODUCT: "NVIDIA-H100-80GB-HBM3"}}, "status": {}}
    assert placement.dtype_on_node({"computeDtype": "auto"}, h100_node) == "bf16"
    assert placement.dtype_on_node({"computeDtype": "bf16"}, t4_node) is None  # pinned: nothing to record
    t4_only = plan(make_spec(resources={"allowedGpuProducts": ["Tesla-T4"]}), fleet)
    assert t4_only.fits and t4_only.compute_dtype == "fp16" and t4_only.eligible_products == ["Tesla-T4"]
    bf16_on_t4 = plan(make_spec(quantization={"computeDtype": "bf16"}, resources={"allowedGpuProducts": ["Tesla-T4"]}), fleet)
    assert not bf16_on_t4.fits and any("compute capability" in w for p in bf16_on_t4.products for w in p.why_not)


def test_min_memory_and_gpu_count_constraints(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(resources={"minGpuMemory": "40Gi"}), fleet)
    assert set(decision.eligible_products) == {"NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3"}
    two = plan(make_spec(resources={"gpus": 2}), fleet)
    assert two.state == "Unschedulable" and all("GPUs on one node" in " ".join(p.why_not) for p in two.products)


def test_long_sequence_suggests_a_computed_max_seq_length(fleet: gpus.GpuInventory) -> None:
    spec = make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": 131072})  # Llama 3.1's full context
    decision = plan(spec, fleet)
    assert decision.state == "Unschedulable"
    [seq] = [s for s in decision.suggestions if "maxSeqLength" in s]
    value = int(seq.split("maxSeqLength to ")[1].split(":")[0])
    assert plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": value}), fleet).fits
    assert not plan(make_spec(dataset={"trainUri": "s3://data/t.jsonl", "maxSeqLength": value + 128}), fleet).fits


def test_gradient_checkpointing_and_micro_batch_suggestions(fleet: gpus.GpuInventory) -> None:
    spec = make_spec(training={"maxSteps": 5, "gradientCheckpointing": False, "microBatchSize": 16},
                     resources={"allowedGpuProducts": ["NVIDIA-A10G"]})
    decision = plan(spec, fleet)
    assert decision.state == "Unschedulable"
    text = " | ".join(decision.suggestions)
    assert "gradientCheckpointing: true" in text or "microBatchSize: 1" in text


def test_trust_remote_code_is_refused_unless_allowed(fleet: gpus.GpuInventory) -> None:
    spec = make_spec(baseModel={"uri": "hf://meta-llama/Llama-3.1-8B", "trustRemoteCode": True})
    refused = plan(spec, fleet)
    assert refused.state == "Invalid" and refused.reason == "TrustRemoteCodeNotAllowed"
    assert "spec.baseModel.trustRemoteCode" in refused.message
    assert plan(spec, fleet, allow_trust_remote_code=True).fits


def test_unknown_target_module_lists_valid_names(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(lora={"targetModules": ["c_attn"]}), fleet)
    assert decision.state == "Invalid" and decision.reason == "UnknownTargetModule"
    assert decision.message.startswith("spec.lora.targetModules: 'c_attn' is not a module of LlamaForCausalLM (valid: q_proj, k_proj")


def test_all_linear_and_phi3_auto(fleet: gpus.GpuInventory) -> None:
    assert plan(make_spec(lora={"targetModules": ["all-linear"]}), fleet).target_modules == list(LLAMA_8B.module_names)
    phi = catalog.lookup("hf://microsoft/Phi-3-mini-4k-instruct")
    assert phi is not None and plan(make_spec(), fleet, phi).target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_cpu_job(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(resources={"gpus": 0}), fleet)
    assert decision.state == "Ready" and decision.compute_dtype == "fp32" and decision.node_affinity is None


def test_no_gpu_nodes(fleet: gpus.GpuInventory) -> None:
    decision = plan(make_spec(), gpus.inventory_from_nodes([]))
    assert decision.state == "Unschedulable" and "no GPU nodes" in decision.message
    assert any("add a node pool with" in s for s in decision.suggestions)


def test_invalid_dict_spec() -> None:
    decision = placement.plan(make_spec(lora={"r": 0}), LLAMA_8B, gpus.inventory_from_nodes([]))
    assert decision.state == "Invalid" and decision.message.startswith("spec.lora.r:")


def test_examples_are_valid() -> None:
    for name in ("demo.yaml", "llama-3.1-8b-qlora.yaml", "llama-3.3-70b-qlora.yaml", "llama-3.3-70b-lora.yaml", "phi-3-mini-lora-t4.yaml"):
        doc = load_example(name)
        assert doc["apiVersion"] == "finetune.dev/v1alpha1" and doc["kind"] == "FineTuneJob"
        assert api.spec_errors(doc["spec"]) == [], name


@pytest.mark.parametrize("fraction", ["0.05", "0.3"])
def test_headroom_is_configurable(fleet: gpus.GpuInventory, fraction: str) -> None:
    decision = plan(make_spec(dataset=SEQ_2048_MICRO_1), fleet, LLAMA_70B, headroom_fraction=fraction)
    h100 = next(p for p in decision.products if p.product == "NVIDIA-H100-80GB-HBM3")
    assert h100.usable_bytes == int(81559 * 2**20 * (1 - float(fraction)))
