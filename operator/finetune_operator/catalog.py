"""Built-in architectures of popular base models, keyed by Hugging Face id.

Lets ``estimate`` and the operator size public models without downloading anything. Figures are
the models' published ``config.json`` values. Private or unlisted models are sized from their own
config.json (the inspection step, or ``estimate --model-config``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import yaml

from .arch import ATTENTION_MODULES, FAMILY_MODULES, LLAMA_MODULES, Architecture

def _peft_table() -> dict[str, tuple[str, ...]]:
    text = resources.files(__package__).joinpath("data/peft_lora_targets.yaml").read_text(encoding="utf-8")
    return {str(k): tuple(v) for k, v in (yaml.safe_load(text)["loraTargetModules"]).items()}


PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = _peft_table()
"""PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, generated from the installed PEFT into
data/peft_lora_targets.yaml (the operator must not import PEFT: it pulls torch).
tests/trainer/test_peft_table.py fails when the two disagree."""


@dataclass(frozen=True)
class AutoTargets:
    """What ``targetModules: [auto]`` resolves to for one model type, and why."""

    modules: tuple[str, ...]
    why: str
    peft_default: tuple[str, ...] | None = None
    """PEFT's own default (q/v for most), shown for comparison; we do not follow it."""


_ALL_LINEAR = (
    "every Linear layer of the block: the QLoRA paper (arXiv 2305.14314, §4) found LoRA on all linear "
    "layers necessary to match full fine-tuning; PEFT's q/v-only default trails it"
)
_MOE = (
    "attention projections{shared}; not the routed experts (fused 3-D parameters: PEFT reaches them only "
    "through target_parameters, which needs lora.dropout \"0\", no DoRA, and multiplies the adapter by "
    "the expert count) nor the router (adapting it shifts load balancing); name experts.gate_up_proj "
    "and experts.down_proj in targetModules to adapt the experts"
)


def _auto(model_type: str, modules: tuple[str, ...], why: str) -> AutoTargets:
    return AutoTargets(modules, why, PEFT_DEFAULT_TARGETS.get(model_type))


AUTO_TARGETS: dict[str, AutoTargets] = {
    **{t: _auto(t, LLAMA_MODULES, _ALL_LINEAR) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text")},
    "phi3": _auto("phi3", FAMILY_MODULES["phi3"], _ALL_LINEAR),
    **{t: _auto(t, ATTENTION_MODULES, _MOE.format(shared="")) for t in ("mixtral", "phimoe", "olmoe", "qwen3_moe")},
    "qwen2_moe": _auto("qwen2_moe", LLAMA_MODULES, _MOE.format(shared=" and the shared expert's MLP (always on, dense)")),
}
"""The [auto] resolution per model type. The estimate and the trainer both use this list: the
operator records it in status.resolved.targetModules and renders it into the trainer's config."""


def default_target_modules(arch: Architecture) -> tuple[str, ...] | None:
    """What [auto] adapts for this architecture, or None when the model type has no entry."""
    row = AUTO_TARGETS.get(arch.model_type)
    if row is None:
        return None
    # a model read from its own weights may lack some (e.g. no shared expert): keep those it has
    present = tuple(m for m in row.modules if m in arch.module_names)
    return present or None


def _arch(
    model_type: str, h: int, layers: int, heads: int, kv: int, inter: int, vocab: int, tie: bool,
    *, head_dim: int | None = None, extra: int = 0, ctx: int | None = None, arch_name: str = "",
) -> Architecture:
    return Architecture(
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim or h // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_embeddings=tie,
        module_names=FAMILY_MODULES[model_type],
        architectures=(arch_name,) if arch_name else (),
        max_position_embeddings=ctx,
        extra_params=extra,
    )


_LLAMA = "LlamaForCausalLM"
_QWEN = "Qwen2ForCausalLM"
_GEMMA3_VISION = 417_000_000  # SigLIP tower + projector of the 4B/12B/27B multimodal checkpoints

# Canonical id → architecture; aliases (Instruct/-it variants, older names) map onto these.
_MODELS: dict[str, Architecture] = {
    "meta-llama/Llama-3.2-1B": _arch("llama", 2048, 16, 32, 8, 8192, 128256, True, head_dim=64, ctx=131072, arch_name=_LLAMA),
    "meta-llama/Llama-3.2-3B": _arch("llama", 3072, 28, 24, 8, 8192, 128256, True, ctx=131072, arch_name=_LLAMA),
    "meta-llama/Llama-3.1-8B": _arch("llama", 4096, 32, 32, 8, 14336, 128256, False, ctx=131072, arch_name=_LLAMA),
    "meta-llama/Llama-3.1-70B": _arch("llama", 8192, 80, 64, 8, 28672, 128256, False, ctx=131072, arch_name=_LLAMA),
    "mistralai/Mistral-7B-v0.1": _arch("mistral", 4096, 32, 32, 8, 14336, 32000, False, ctx=32768, arch_name="MistralForCausalLM"),
    "mistralai/Mistral-7B-v0.3": _arch("mistral", 4096, 32, 32, 8, 14336, 32768, False, ctx=32768, arch_name="MistralForCausalLM"),
    "Qwen/Qwen2.5-0.5B": _arch("qwen2", 896, 24, 14, 2, 4864, 151936, True, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-1.5B": _arch("qwen2", 1536, 28, 12, 2, 8960, 151936, True, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-3B": _arch("qwen2", 2048, 36, 16, 2, 11008, 151936, True, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-7B": _arch("qwen2", 3584, 28, 28, 4, 18944, 152064, False, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-14B": _arch("qwen2", 5120, 48, 40, 8, 13824, 152064, False, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-32B": _arch("qwen2", 5120, 64, 40, 8, 27648, 152064, False, ctx=32768, arch_name=_QWEN),
    "Qwen/Qwen2.5-72B": _arch("qwen2", 8192, 80, 64, 8, 29568, 152064, False, ctx=32768, arch_name=_QWEN),
    "google/gemma-2-2b": _arch("gemma2", 2304, 26, 8, 4, 9216, 256000, True, head_dim=256, ctx=8192, arch_name="Gemma2ForCausalLM"),
    "google/gemma-2-9b": _arch("gemma2", 3584, 42, 16, 8, 14336, 256000, True, head_dim=256, ctx=8192, arch_name="Gemma2ForCausalLM"),
    "google/gemma-2-27b": _arch("gemma2", 4608, 46, 32, 16, 36864, 256000, True, head_dim=128, ctx=8192, arch_name="Gemma2ForCausalLM"),
    "google/gemma-3-1b-pt": _arch("gemma3_text", 1152, 26, 4, 1, 6912, 262144, True, head_dim=256, ctx=32768, arch_name="Gemma3ForCausalLM"),
    "google/gemma-3-4b-pt": _arch("gemma3", 2560, 34, 8, 4, 10240, 262208, True, head_dim=256, extra=_GEMMA3_VISION, ctx=131072, arch_name="Gemma3ForConditionalGeneration"),
    "google/gemma-3-12b-pt": _arch("gemma3", 3840, 48, 16, 8, 15360, 262208, True, head_dim=256, extra=_GEMMA3_VISION, ctx=131072, arch_name="Gemma3ForConditionalGeneration"),
    "google/gemma-3-27b-pt": _arch("gemma3", 5376, 62, 32, 16, 21504, 262208, True, head_dim=128, extra=_GEMMA3_VISION, ctx=131072, arch_name="Gemma3ForConditionalGeneration"),
    "microsoft/Phi-3-mini-4k-instruct": _arch("phi3", 3072, 32, 32, 32, 8192, 32064, False, ctx=4096, arch_name="Phi3ForCausalLM"),
    "microsoft/Phi-3-mini-128k-instruct": _arch("phi3", 3072, 32, 32, 32, 8192, 32064, False, ctx=131072, arch_name="Phi3ForCausalLM"),
    "microsoft/Phi-3-medium-4k-instruct": _arch("phi3", 5120, 40, 40, 10, 17920, 32064, False, ctx=4096, arch_name="Phi3ForCausalLM"),
    "microsoft/Phi-3.5-mini-instruct": _arch("phi3", 3072, 32, 32, 32, 8192, 32064, False, ctx=131072, arch_name="Phi3ForCausalLM"),
    "microsoft/phi-4": _arch("phi3", 5120, 40, 40, 10, 17920, 100352, False, ctx=16384, arch_name="Phi3ForCausalLM"),
    "microsoft/Phi-4-mini-instruct": _arch("phi3", 3072, 32, 24, 8, 8192, 200064, True, ctx=131072, arch_name="Phi3ForCausalLM"),
}



def _moe(config: dict[str, Any]) -> Architecture:
    """An MoE entry written as its published config.json (the fields the estimate reads)."""
    return Architecture.from_hf_config(config)


_MIXTRAL = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "tie_word_embeddings": False,
            "num_experts_per_tok": 2, "num_key_value_heads": 8}
_QWEN3_MOE = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "tie_word_embeddings": False,
              "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "vocab_size": 151936, "max_position_embeddings": 40960}
_MODELS.update({
    "mistralai/Mixtral-8x7B-v0.1": _moe({**_MIXTRAL, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                                         "intermediate_size": 14336, "num_local_experts": 8, "vocab_size": 32000,
                                         "max_position_embeddings": 32768}),
    "mistralai/Mixtral-8x22B-v0.1": _moe({**_MIXTRAL, "hidden_size": 6144, "num_hidden_layers": 56, "num_attention_heads": 48,
                                          "intermediate_size": 16384, "num_local_experts": 8, "vocab_size": 32768,
                                          "max_position_embeddings": 65536}),
    "Qwen/Qwen3-30B-A3B": _moe({**_QWEN3_MOE, "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
                                "num_key_value_heads": 4, "intermediate_size": 6144, "moe_intermediate_size": 768}),
    "Qwen/Qwen3-235B-A22B": _moe({**_QWEN3_MOE, "hidden_size": 4096, "num_hidden_layers": 94, "num_attention_heads": 64,
                                  "num_key_value_heads": 4, "intermediate_size": 12288, "moe_intermediate_size": 1536}),
    "Qwen/Qwen1.5-MoE-A2.7B": _moe({"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 2048,
                                    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                                    "intermediate_size": 5632, "moe_intermediate_size": 1408,
                                    "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
                                    "decoder_sparse_step": 1, "vocab_size": 151936, "tie_word_embeddings": False,
                                    "max_position_embeddings": 8192}),
    "allenai/OLMoE-1B-7B-0924": _moe({"model_type": "olmoe", "architectures": ["OlmoeForCausalLM"], "hidden_size": 2048,
                                      "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                                      "intermediate_size": 1024, "num_experts": 64, "num_experts_per_tok": 8,
                                      "vocab_size": 50304, "tie_word_embeddings": False, "max_position_embeddings": 4096}),
    "microsoft/Phi-3.5-MoE-instruct": _moe({"model_type": "phimoe", "architectures": ["PhiMoEForCausalLM"], "hidden_size": 4096,
                                            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                            "intermediate_size": 6400, "num_local_experts": 16, "num_experts_per_tok": 2,
                                            "vocab_size": 32064, "tie_word_embeddings": False,
                                            "max_position_embeddings": 131072}),
})

_ALIASES: dict[str, str] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-v0.1",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "mistralai/Mixtral-8x22B-v0.1",
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": "Qwen/Qwen1.5-MoE-A2.7B",
    "allenai/OLMoE-1B-7B-0924-Instruct": "allenai/OLMoE-1B-7B-0924",
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3-70B": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.3-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "google/gemma-3-1b-it": "google/gemma-3-1b-pt",
    "google/gemma-3-4b-it": "google/gemma-3-4b-pt",
    "google/gemma-3-12b-it": "google/gemma-3-12b-pt",
    "google/gemma-3-27b-it": "google/gemma-3-27b-pt",
    "microsoft/Phi-3-medium-128k-instruct": "microsoft/Phi-3-medium-4k-instruct",
    **{f"Qwen/Qwen2.5-{s}-Instruct": f"Qwen/Qwen2.5-{s}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")},
    **{f"google/gemma-2-{s}-it": f"google/gemma-2-{s}" for s in ("2b", "9b", "27b")},
}

_INDEX: dict[str, str] = {k.lower(): k for k in _MODELS} | {k.lower(): v for k, v in _ALIASES.items()}


def model_ids() -> list[str]:
    """Every id the catalog answers for."""
    return sorted(set(_MODELS) | set(_ALIASES))


def lookup(model_uri: str) -> Architecture | None:
    """The architecture of ``hf://org/name`` (or ``org/name``), or None when not built in."""
    ref = model_uri.removeprefix("hf://").split("@", 1)[0].strip("/")
    canonical = _INDEX.get(ref.lower())
    if canonical is None:
        return None
    return replace(_MODELS[canonical], name=canonical)
