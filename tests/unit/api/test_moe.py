"""Mixture-of-experts sizing from config.json shapes written from the published model cards."""

from __future__ import annotations

from typing import Any

import pytest
from ftj_testdata import make_spec

from finetune_operator import api, builders, catalog, gpus, placement
from finetune_operator.arch import EXPERT_PARAMETERS, Architecture
from finetune_operator.estimate import TrainingShape, estimate

# Total and active (per-token) parameters from the model cards, within 2%.
PUBLISHED_MOE = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (46.7e9, 12.9e9),
    "mistralai/Mixtral-8x22B-v0.1": (141e9, 39e9),
    "Qwen/Qwen3-30B-A3B": (30.5e9, 3.3e9),
    "Qwen/Qwen3-235B-A22B": (235e9, 22e9),
    "Qwen/Qwen1.5-MoE-A2.7B": (14.3e9, 2.7e9),
    "allenai/OLMoE-1B-7B-0924": (6.9e9, 1.3e9),
    "microsoft/Phi-3.5-MoE-instruct": (41.9e9, 6.6e9),
}

# Mixtral-8x7B's config.json as published (the fields the estimate reads).
MIXTRAL_CONFIG: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "rope_theta": 1e6, "sliding_window": None,
}
QWEN3_30B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": False,
}


@pytest.mark.parametrize(("model", "counts"), PUBLISHED_MOE.items())
def test_moe_parameter_counts_count_every_expert(model: str, counts: tuple[float, float]) -> None:
    arch = catalog.lookup(f"hf://{model}")
    assert arch is not None and arch.is_moe
    total, active = counts
    assert abs(arch.total_params - total) / total < 0.02, arch.total_params
    assert abs(arch.active_params - active) / active < 0.03, arch.active_params


def test_mixtral_from_config_json_is_46b_and_does_not_fit_an_a10g(fleet: gpus.GpuInventory) -> None:
    arch = Architecture.from_hf_config(MIXTRAL_CONFIG, ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"])
    assert arch.total_params > 46e9 and arch.unsupported is None
    decision = placement.plan(api.FineTuneJobSpec.model_validate(make_spec()), arch, fleet)
    assert not decision.fits
    assert "NVIDIA-A10G" not in decision.eligible_products
    assert decision.estimate is not None
    # 45 B expert parameters stay in bf16 under QLoRA (fused 3-D parameters bitsandbytes leaves alone)
    assert decision.estimate.breakdown["expertWeights"] == arch.expert_params * 2 > 89e9
    assert decision.estimate.breakdown["linearWeights"] < 2e9  # only attention is 4-bit


def test_qwen3_30b_a3b_is_sized_at_30b_not_3b() -> None:
    arch = Architecture.from_hf_config(QWEN3_30B_CONFIG)
    assert 30e9 < arch.total_params < 31e9 and arch.moe_layers == 48
    est = estimate(arch, TrainingShape(target_modules=("q_proj", "v_proj")))
    assert est.breakdown["expertWeights"] > 55e9


def test_mlp_only_layers_and_sparse_step_keep_dense_mlps() -> None:
    sparse_every_other = {**QWEN3_30B_CONFIG, "decoder_sparse_step": 2, "mlp_only_layers": [1]}
    arch = Architecture.from_hf_config(sparse_every_other)
    # sparse where (index + 1) % 2 == 0 (1, 3, 5, …) except layer 1, listed as dense-only: 23 of 48
    assert arch.moe_layers == 23
    dense_mlp = 3 * 2048 * 6144
    all_sparse = Architecture.from_hf_config(QWEN3_30B_CONFIG)
    assert arch.linear_params - all_sparse.linear_params == 25 * dense_mlp
    assert all_sparse.expert_params - arch.expert_params == 25 * 128 * (3 * 2048 * 768 + 2048)


def test_activations_follow_the_routed_experts_not_all_of_them() -> None:
    arch = catalog.lookup("hf://mistralai/Mixtral-8x7B-v0.1")
    assert arch is not None
    shape = TrainingShape(target_modules=("q_proj",), gradient_checkpointing=False, seq_len=1024)
    top2 = estimate(arch, shape).breakdown["activations"]
    top1 = estimate(Architecture(**{**_fields(arch), "experts_per_token": 1}), shape).breakdown["activations"]
    eight = estimate(Architecture(**{**_fields(arch), "num_experts": 16}), shape).breakdown["activations"]
    assert top2 > top1 * 1.4  # the expert MLP dominates a layer's activations
    assert eight - top2 < 0.01 * top2  # more experts on the shelf: weights grow, activations barely


def _fields(arch: Architecture) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(arch, f.name) for f in fields(arch) if f.init}


def test_qwen2_moe_shared_expert_is_a_dense_linear_target() -> None:
    arch = catalog.lookup("hf://Qwen/Qwen1.5-MoE-A2.7B")
    assert arch is not None and arch.shared_expert_intermediate_size == 5632
    assert catalog.default_target_modules(arch) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # the shared expert's gate_proj is 2048→5632 on every sparse layer
    assert arch.lora_params(["gate_proj"], r=8) == 8 * (2048 + 5632) * 24


def test_lora_on_experts_goes_through_target_parameters(fleet: gpus.GpuInventory) -> None:
    arch = catalog.lookup("hf://allenai/OLMoE-1B-7B-0924")
    assert arch is not None
    spec = make_spec(lora={"targetModules": ["q_proj", "experts.gate_up_proj"], "dropout": "0"})
    decision = placement.plan(api.FineTuneJobSpec.model_validate(spec), arch, fleet)
    assert decision.fits and decision.target_parameters == ["experts.gate_up_proj"]
    # PEFT's ParamWrapper: lora_A h→r·E and lora_B r·E→2·I per layer
    expected = 16 * (2048 + 2048) * 16 + 16 * 64 * (2048 + 2 * 1024) * 16
    assert decision.estimate is not None and decision.estimate.trainable_params == expected
    resolved = decision.status_fields()["resolved"]
    cfg = builders.trainer_config(api.FineTuneJobSpec.model_validate(spec), {"name": "j", "uid": "u", "namespace": "n"},
                                  _config(), resolved)
    assert cfg["lora_target_modules"] == ["q_proj"] and cfg["lora_target_parameters"] == ["experts.gate_up_proj"]


def _config() -> Any:
    from finetune_operator.config import OperatorConfig

    return OperatorConfig()


def test_lora_on_experts_needs_zero_dropout_and_no_dora(fleet: gpus.GpuInventory) -> None:
    arch = catalog.lookup("hf://allenai/OLMoE-1B-7B-0924")
    assert arch is not None
    spec = make_spec(lora={"targetModules": list(EXPERT_PARAMETERS)})
    decision = placement.plan(api.FineTuneJobSpec.model_validate(spec), arch, fleet)
    assert decision.state == "Invalid" and 'lora.dropout: "0"' in decision.message
    dense = placement.plan(api.FineTuneJobSpec.model_validate(make_spec(lora={"targetModules": ["experts.down_proj"], "dropout": "0"})),
                           catalog.lookup("hf://meta-llama/Llama-3.1-8B") or arch, fleet)
    assert dense.state == "Invalid" and "has no experts" in dense.message


@pytest.mark.parametrize(("config", "needle"), [
    ({"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8}, "mixture-of-experts"),
    ({"model_type": "dbrx", "ffn_config": {"moe_num_experts": 16}}, "mixture-of-experts"),
    ({"model_type": "gpt_neox"}, "does not model"),
])
def test_architectures_the_estimator_does_not_model_are_refused(fleet: gpus.GpuInventory, config: dict[str, Any], needle: str) -> None:
    base = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000, "intermediate_size": 11008}
    arch = Architecture.from_hf_config({**base, **config})
    decision = placement.plan(api.FineTuneJobSpec.model_validate(make_spec()), arch, fleet)
    assert decision.state == "Invalid" and decision.reason == "UnsupportedArchitecture"
    assert needle in decision.message and "llama" in decision.message  # lists what is supported


def test_every_moe_family_in_transformers_has_its_expert_keys() -> None:
    """The families we size read their expert counts from the keys transformers' configs define."""
    import re
    from pathlib import Path

    from finetune_operator.arch import MOE_FAMILIES

    import transformers  # the installed package, wherever the interpreter running the tests has it

    root = Path(transformers.__file__).resolve().parent
    configs = {p.parent.name: p for p in root.glob("models/*/configuration_*.py")}
    assert configs, f"transformers' model configurations under {root}"
    for model_type, family in MOE_FAMILIES.items():
        text = configs[model_type].read_text(encoding="utf-8")
        for key in (family.experts_key, family.expert_size_key, "num_experts_per_tok"):
            assert re.search(rf"\b{key}\b", text), (model_type, key)


def test_naming_the_router_explains_why_it_is_not_a_target(fleet: gpus.GpuInventory) -> None:
    arch = catalog.lookup("hf://mistralai/Mixtral-8x7B-v0.1")
    assert arch is not None
    decision = placement.plan(api.FineTuneJobSpec.model_validate(make_spec(lora={"targetModules": ["q_proj", "gate"]})), arch, fleet)
    assert decision.state == "Invalid" and "router" in decision.message
    assert "experts.gate_up_proj" in decision.message  # the valid list names the expert parameters


@pytest.mark.parametrize("model", sorted(PUBLISHED_MOE))
def test_to_config_round_trips_the_moe_fields(model: str) -> None:
    arch = catalog.lookup(f"hf://{model}")
    assert arch is not None
    again = Architecture.from_hf_config(arch.to_config())
    assert (again.total_params, again.expert_params, again.moe_layers) == (arch.total_params, arch.expert_params, arch.moe_layers)
