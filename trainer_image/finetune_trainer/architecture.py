"""What the operator's VRAM estimate needs from a model, read from config.json without the weights."""

from __future__ import annotations

from typing import Any

CONTRACT_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "head_dim",
    # Mixture-of-Experts sizes and the context length: the operator's estimate reads these
    # (finetune_operator.arch.MOE_CONFIG_FIELDS) to count every expert and check maxSeqLength.
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "max_position_embeddings",
    "rope_scaling",
)


def describe_model(model_dir: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Architecture summary (contract §3) plus `num_parameters`, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    arch: dict[str, Any] = {}
    for name in CONTRACT_FIELDS:
        value = getattr(text, name, None)
        if value is None:
            value = getattr(config, name, None)
        arch[name] = value
    if arch["head_dim"] is None and arch["hidden_size"] and arch["num_attention_heads"]:
        arch["head_dim"] = arch["hidden_size"] // arch["num_attention_heads"]
    if arch["num_key_value_heads"] is None:
        arch["num_key_value_heads"] = arch["num_attention_heads"]
    # Modules are instantiated on the meta device: shapes only, so this costs nothing even for a 70B model.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    arch["module_names"] = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    )
    arch["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
    return arch


def summary_architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """Only the contract's fields, for the ≤4 KiB termination message."""
    return {k: arch.get(k) for k in (*CONTRACT_FIELDS, "module_names")}
