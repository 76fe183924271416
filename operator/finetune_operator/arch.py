"""The shape of a decoder-only transformer, as far as memory and LoRA targeting need it.

Built from a Hugging Face ``config.json`` (read by the inspection pod for private models) or from
the built-in ``catalog``. Pure: no torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Leaf Linear layers inside each decoder layer, per model_type. Llama's names are the common case;
# Phi-3 fuses q/k/v and gate/up.
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PHI3_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "llama": LLAMA_MODULES,
    "mistral": LLAMA_MODULES,
    "qwen2": LLAMA_MODULES,
    "qwen3": LLAMA_MODULES,
    "gemma": LLAMA_MODULES,
    "gemma2": LLAMA_MODULES,
    "gemma3": LLAMA_MODULES,
    "gemma3_text": LLAMA_MODULES,
    "phi3": PHI3_MODULES,
}
# Gemma 2/3 have four norms per layer (pre/post attention and feed-forward), the others two.
_NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "gemma3_text": 4}
OUTPUT_MODULES = frozenset({"lm_head", "embed_out", "output"})


class ArchitectureError(ValueError):
    """config.json lacks something the estimate needs."""


@dataclass(frozen=True)
class Architecture:
    """Dimensions of a decoder-only causal LM."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    module_names: tuple[str, ...]
    """Distinct leaf Linear names inside the decoder layers (lm_head excluded)."""
    architectures: tuple[str, ...] = ()
    max_position_embeddings: int | None = None
    extra_params: int = 0
    """Parameters outside the text decoder (e.g. a vision tower), kept in the compute dtype."""
    name: str | None = None
    module_names_known: bool = True
    """False when the names were assumed from the model_type rather than read from the model."""
    _shapes: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shapes", {m: self._shape(m) for m in self.module_names})

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], module_names: Iterable[str] | None = None) -> Architecture:
        """Read a ``config.json`` dict (multimodal configs: their ``text_config``)."""
        outer = config
        if isinstance(config.get("text_config"), Mapping):
            config = {**config["text_config"], "architectures": outer.get("architectures", [])}
        model_type = str(config.get("model_type") or outer.get("model_type") or "unknown")

        def need(*keys: str) -> int:
            for key in keys:
                if config.get(key) is not None:
                    return int(config[key])
            raise ArchitectureError(f"config.json has no {keys[0]}")

        hidden = need("hidden_size", "n_embd", "d_model")
        heads = need("num_attention_heads", "n_head")
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        intermediate = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
        names: tuple[str, ...]
        known = module_names is not None
        if module_names is not None:
            names = tuple(sorted({n for n in module_names if n not in OUTPUT_MODULES}))
        else:
            names = FAMILY_MODULES.get(model_type, LLAMA_MODULES)
        # transformers' PretrainedConfig defaults tie_word_embeddings to True; Llama-3 8B+ sets it false.
        tie = bool(config.get("tie_word_embeddings", outer.get("tie_word_embeddings", True)))
        mpe = config.get("max_position_embeddings")
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=need("num_hidden_layers", "n_layer", "num_layers"),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=need("vocab_size"),
            tie_embeddings=tie,
            module_names=names,
            architectures=tuple(str(a) for a in (config.get("architectures") or ())),
            max_position_embeddings=int(mpe) if mpe is not None else None,
            module_names_known=known or model_type in FAMILY_MODULES,
        )

    def to_config(self) -> dict[str, Any]:
        """The config.json fields this class reads (the contract's inspection ``architecture``)."""
        return {
            "model_type": self.model_type,
            "architectures": list(self.architectures),
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_embeddings,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
        }

    # --- shapes ----------------------------------------------------------------------------

    def _shape(self, name: str) -> tuple[int, int]:
        """(in_features, out_features) of a per-layer Linear, inferred from its conventional name."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        n = name.lower()
        if "qkv" in n or "query_key_value" in n or n == "c_attn":
            return h, q + 2 * kv
        if "gate_up" in n:
            return h, 2 * i
        if n.startswith("q") or "query" in n:
            return h, q
        if n.startswith(("k_", "v_")) or n in ("k", "v", "key", "value"):
            return h, kv
        if n.startswith("o_") or n in ("o", "out_proj", "dense", "c_proj_attn", "wo"):
            return q, h
        if "down" in n or n in ("fc2", "w2", "c_proj", "dense_4h_to_h"):
            return i, h
        return h, i  # gate/up/fc1/w1/w3 and anything unrecognised: the widest plausible shape

    def linear_shape(self, name: str) -> tuple[int, int]:
        return self._shapes.get(name) or self._shape(name)

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self._shapes.values())

    @property
    def linear_params(self) -> int:
        """Parameters in decoder Linear layers: the ones quantization compresses."""
        return self.num_layers * self.linear_params_per_layer

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the LM head when it is not tied to it."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def norm_params(self) -> int:
        per_layer = _NORMS_PER_LAYER.get(self.model_type, 2)
        return (self.num_layers * per_layer + 1) * self.hidden_size

    @property
    def unquantized_params(self) -> int:
        """Parameters kept in the compute dtype under quantization (bitsandbytes skips these)."""
        return self.embedding_params + self.norm_params + self.extra_params

    @property
    def total_params(self) -> int:
        return self.linear_params + self.unquantized_params

    @property
    def largest_linear(self) -> int:
        return max((a * b for a, b in self._shapes.values()), default=0)

    def lora_params(self, targets: Iterable[str], r: int, dora: bool = False) -> int:
        """Trainable parameters of LoRA (A: r×in, B: out×r; DoRA adds a magnitude per output)."""
        total = 0
        for name in targets:
            fan_in, fan_out = self.linear_shape(name)
            total += r * (fan_in + fan_out) + (fan_out if dora else 0)
        return total * self.num_layers

    def all_linear(self) -> list[str]:
        """What PEFT's all-linear selects: every Linear except the output layer."""
        return list(self.module_names)
