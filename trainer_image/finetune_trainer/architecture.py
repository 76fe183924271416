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


# Upper bounds on config.json's sizes, far above any released model (Llama 3.1 405B: hidden 16384,
# 126 layers, vocabulary 128256): a value past them is a corrupt or hostile file, refused before
# transformers builds anything from it.
SIZE_LIMITS = {
    "hidden_size": 1 << 20,
    "num_hidden_layers": 1 << 12,
    "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14,
    "intermediate_size": 1 << 22,
    "vocab_size": 1 << 24,
    "head_dim": 1 << 14,
    "num_local_experts": 1 << 12,
    "num_experts": 1 << 12,
    "num_experts_per_tok": 1 << 12,
    "moe_intermediate_size": 1 << 22,
    "shared_expert_intermediate_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
}
MAX_CONFIG_BYTES = 4 << 20


def _sections(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("", config)]
    for key in ("text_config", "vision_config"):
        if isinstance(config.get(key), dict):
            out.append((f"{key}.", config[key]))
    return out


def check_model_dir(model_dir: str, trust_remote_code: bool = False) -> None:
    """Refuse a model directory transformers should not be handed: read as plain JSON, no model code imported.

    config.json must be a JSON object whose sizes are positive whole numbers within SIZE_LIMITS;
    with trust_remote_code off, a repository that ships its own Python code (``*.py`` files, an
    ``auto_map``) is refused by name rather than silently loaded with the built-in classes.
    """
    import json
    import os

    from .errors import ConfigError

    where = "the base model's config.json"
    path = os.path.join(model_dir, "config.json")
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES >> 20} MiB; it is not a model configuration")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: missing in the model directory (spec.baseModel.uri must point at a Hugging Face model)") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{where}: not valid JSON (or nested too deeply); re-export the model") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: must be a JSON object of settings")
    problems = []
    for prefix, section in _sections(config):
        for name, limit in SIZE_LIMITS.items():
            value = section.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                problems.append(f"{prefix}{name} must be a whole number from 1 to {limit} (got {value!r:.40})")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + "; the file is corrupt or not a supported model")
    if trust_remote_code:
        return
    code = sorted(n for n in os.listdir(model_dir) if n.endswith(".py"))
    mapped = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            with open(os.path.join(model_dir, name), encoding="utf-8") as f:
                doc = config if name == "config.json" else json.load(f)
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and doc.get("auto_map"):
            mapped.append(f"auto_map in {name}")
    if code or mapped:
        found = ", ".join([*code[:5], *mapped])
        raise ConfigError(
            f"the base model ships its own Python code ({found}) and spec.baseModel.trustRemoteCode is off: "
            "that code is not run; use a model transformers supports without it, or set trustRemoteCode "
            "if the platform's configuration allows it"
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
