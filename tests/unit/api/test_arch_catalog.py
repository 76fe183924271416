"""Architectures: from config.json, the built-in catalog, and PEFT's default targets."""

from __future__ import annotations

import pytest

from finetune_operator import catalog
from finetune_operator.arch import Architecture, ArchitectureError

# Published parameter counts (model cards / `num_parameters()`), within 1.5%.
PUBLISHED = {
    "meta-llama/Llama-3.2-1B": 1.24e9,
    "meta-llama/Llama-3.2-3B": 3.21e9,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03e9,
    "meta-llama/Llama-3.3-70B-Instruct": 70.55e9,
    "mistralai/Mistral-7B-v0.3": 7.25e9,
    "Qwen/Qwen2.5-0.5B": 0.494e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.62e9,
    "Qwen/Qwen2.5-72B": 72.7e9,
    "google/gemma-2-9b-it": 9.24e9,
    "google/gemma-3-1b-it": 1.0e9,
    "microsoft/Phi-3-mini-4k-instruct": 3.82e9,
    "microsoft/phi-4": 14.66e9,
}


@pytest.mark.parametrize(("model", "params"), PUBLISHED.items())
def test_catalog_parameter_counts(model: str, params: float) -> None:
    arch = catalog.lookup(f"hf://{model}")
    assert arch is not None
    assert abs(arch.total_params - params) / params < 0.015, arch.total_params


def test_lookup_is_case_insensitive_and_returns_none_for_unknown() -> None:
    assert catalog.lookup("hf://META-LLAMA/llama-3.1-8b") is not None
    assert catalog.lookup("meta-llama/Llama-3.1-8B") is not None
    assert catalog.lookup("hf://someone/private-model") is None
    assert catalog.lookup("s3://models/tiny/") is None


def test_from_hf_config_llama() -> None:
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False,
    }
    arch = Architecture.from_hf_config(config)
    assert arch.head_dim == 128
    assert arch.total_params == catalog.lookup("hf://meta-llama/Llama-3.1-8B").total_params  # type: ignore[union-attr]
    assert arch.linear_shape("k_proj") == (4096, 1024)


def test_from_hf_config_reads_module_names_and_text_config() -> None:
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "num_hidden_layers": 34,
                              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                              "intermediate_size": 10240, "vocab_size": 262208}}
    arch = Architecture.from_hf_config(config, ["q_proj", "v_proj", "lm_head", "q_proj"])
    assert arch.module_names == ("q_proj", "v_proj")
    assert arch.linear_shape("q_proj") == (2560, 2048)
    assert arch.tie_embeddings is True  # transformers' default


def test_from_hf_config_missing_field() -> None:
    with pytest.raises(ArchitectureError, match="hidden_size"):
        Architecture.from_hf_config({"num_attention_heads": 8, "vocab_size": 10})


def test_phi3_fused_modules() -> None:
    arch = catalog.lookup("hf://microsoft/Phi-3-mini-4k-instruct")
    assert arch is not None
    assert arch.linear_shape("qkv_proj") == (3072, 3 * 3072)
    assert arch.linear_shape("gate_up_proj") == (3072, 2 * 8192)
    assert catalog.default_target_modules(arch) == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def test_lora_and_total_params_of_llama_3_1_8b() -> None:
    # all: 8,030,261,248 as print_trainable_parameters reports; LoRA r=16 on q_proj (4096→4096)
    # and v_proj (4096→1024, GQA): 16·(8192 + 5120)·32 layers
    arch = catalog.lookup("hf://meta-llama/Llama-3.1-8B")
    assert arch is not None
    assert arch.lora_params(["q_proj", "v_proj"], 16) == 6_815_744
    assert arch.lora_params(["q_proj", "v_proj"], 16, dora=True) == 6_815_744 + (4096 + 1024) * 32
    assert arch.total_params == 8_030_261_248


def test_peft_table_is_data_and_auto_is_a_deliberate_choice_per_family() -> None:
    """PEFT's table is generated data (tests/trainer/test_peft_table.py checks it against PEFT);
    [auto] is our own per-family choice, every one with a reason, every supported type covered."""
    from finetune_operator.arch import SUPPORTED_MODEL_TYPES

    assert catalog.PEFT_DEFAULT_TARGETS["mixtral"] == ("q_proj", "v_proj")
    assert catalog.PEFT_DEFAULT_TARGETS["gpt_neox"] == ("query_key_value",)
    assert set(catalog.AUTO_TARGETS) == set(SUPPORTED_MODEL_TYPES)
    for model_type, row in catalog.AUTO_TARGETS.items():
        assert row.why and set(row.modules) <= set(__import__("finetune_operator.arch", fromlist=["x"]).FAMILY_MODULES[model_type])
        assert row.peft_default == catalog.PEFT_DEFAULT_TARGETS.get(model_type)
    llama = catalog.AUTO_TARGETS["llama"]
    assert len(llama.modules) == 7 and "QLoRA" in llama.why  # all linear layers, not PEFT's q/v


def test_every_catalog_model_has_a_default_target() -> None:
    for model in catalog.model_ids():
        arch = catalog.lookup(model)
        assert arch is not None and catalog.default_target_modules(arch), model
