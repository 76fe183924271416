"""Built-in architectures of popular base models, keyed by Hugging Face id.

Lets ``estimate`` and the operator size public models without downloading anything. Figures are
the models' published ``config.json`` values. Private or unlisted models are sized from their own
config.json (the inspection step, or ``estimate --model-config``).
"""

from __future__ import annotations

from dataclasses import replace

from .arch import FAMILY_MODULES, Architecture

# PEFT's default LoRA targets per model_type (peft.utils.constants.
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft 0.21). Copied, not imported: the operator
# must not depend on torch/peft. A unit test compares these with PEFT's table where PEFT has an
# entry. PEFT has none for phi3 and the multimodal gemma3: there we choose the fused attention
# projection (phi3) and the text model's own defaults (gemma3), as the issue asks.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "gemma3": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
}
PEFT_HAS_NO_DEFAULT = frozenset({"phi3", "gemma3"})


def default_target_modules(arch: Architecture) -> tuple[str, ...] | None:
    """PEFT's per-architecture default, or None when there is none (the user must list modules)."""
    return DEFAULT_TARGET_MODULES.get(arch.model_type)


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

_ALIASES: dict[str, str] = {
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
