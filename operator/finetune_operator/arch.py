"""The shape of a decoder-only transformer, as far as memory and LoRA targeting need it.

Built from a Hugging Face ``config.json`` (read by the inspection pod for private models) or from
the built-in ``catalog``. Pure: no torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

# Leaf Linear layers inside each decoder layer, per model_type. Llama's names are the common case;
# Phi-3 fuses q/k/v and gate/up.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LLAMA_MODULES = (*ATTENTION_MODULES, *MLP_MODULES)
PHI3_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# The routed experts of every MoE family transformers 5.24 ships here are one fused 3-D parameter
# pair per layer (``mlp.experts.gate_up_proj`` [E, 2·I, h] and ``mlp.experts.down_proj`` [E, h, I]),
# not Linear modules: bitsandbytes' load_in_4bit leaves them in the compute dtype, and LoRA reaches
# them only through PEFT's ``target_parameters``.
EXPERT_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")


@dataclass(frozen=True)
class MoeFamily:
    """Where a mixture-of-experts family keeps its expert counts in config.json."""

    experts_key: str
    expert_size_key: str
    """The per-expert MLP width (Mixtral and OLMoE reuse intermediate_size)."""
    shared: bool = False
    """A shared expert (an always-on SwiGLU MLP with a sigmoid gate, Linear h→1) next to the routed ones."""
    sparse_step: bool = False
    """decoder_sparse_step and mlp_only_layers choose which layers are sparse (Qwen); else all are."""


MOE_FAMILIES: dict[str, MoeFamily] = {
    "mixtral": MoeFamily("num_local_experts", "intermediate_size"),
    "phimoe": MoeFamily("num_local_experts", "intermediate_size"),
    "olmoe": MoeFamily("num_experts", "intermediate_size"),
    "qwen2_moe": MoeFamily("num_experts", "moe_intermediate_size", shared=True, sparse_step=True),
    "qwen3_moe": MoeFamily("num_experts", "moe_intermediate_size", sparse_step=True),
}
# config.json keys that mark a mixture-of-experts model: one with any of these whose family is not
# above is refused rather than sized as a dense model.
MOE_MARKER_KEYS = (
    "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
    "moe_intermediate_size", "ffn_config",
)
MOE_CONFIG_FIELDS = (
    "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers",
    "max_position_embeddings", "rope_scaling",
)
"""What the inspection's ``architecture`` must carry beyond the dense fields for MoE and context checks."""

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
    "mixtral": ATTENTION_MODULES,
    "phimoe": ATTENTION_MODULES,
    "olmoe": ATTENTION_MODULES,
    "qwen3_moe": ATTENTION_MODULES,
    "qwen2_moe": (*ATTENTION_MODULES, *MLP_MODULES, "shared_expert_gate"),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(FAMILY_MODULES))
# Gemma 2/3 have four norms per layer (pre/post attention and feed-forward), the others two.
_NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "gemma3_text": 4}
OUTPUT_MODULES = frozenset({"lm_head", "embed_out", "output"})


class _MoeFields(TypedDict, total=False):
    """The Architecture fields from_hf_config reads from a MoE family's config.json."""

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_expert_intermediate_size: int
    moe_layers: int


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
    num_experts: int = 0
    """Routed experts per sparse layer (0: a dense model)."""
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    moe_layers: int = 0
    """Decoder layers with a sparse MoE block; the others keep the dense MLP."""
    unsupported: str | None = None
    """Why the estimator cannot size this model (None: it can)."""
    _shapes: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shapes", {m: self._shape(m) for m in self.module_names})

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def _instances(self, name: str) -> list[tuple[int, int, int]]:
        """(in, out, how many layers) of the Linear layers called ``name``."""
        if not self.is_moe or name in ATTENTION_MODULES or name not in (*MLP_MODULES, "shared_expert_gate"):
            return [(*self.linear_shape(name), self.num_layers)]
        h = self.hidden_size
        dense = self.num_layers - self.moe_layers
        out: list[tuple[int, int, int]] = []
        if name == "shared_expert_gate":
            return [(h, 1, self.moe_layers)] if self.shared_expert_intermediate_size else []
        if self.shared_expert_intermediate_size and self.moe_layers:
            s_i = self.shared_expert_intermediate_size
            out.append(((s_i, h) if name == "down_proj" else (h, s_i)) + (self.moe_layers,))
        if dense:
            out.append((*self.linear_shape(name), dense))
        return out

    def expert_parameter_shape(self, name: str) -> tuple[int, int]:
        """(in, out) of one expert's slice of a fused expert parameter."""
        h, i = self.hidden_size, self.expert_intermediate_size
        return (h, 2 * i) if name.endswith("gate_up_proj") else (i, h)

    @property
    def expert_params(self) -> int:
        """Routed experts' weights (all resident, whichever are routed) plus the routers."""
        if not self.is_moe:
            return 0
        per_expert = 3 * self.hidden_size * self.expert_intermediate_size
        return self.moe_layers * self.num_experts * (per_expert + self.hidden_size)

    @property
    def active_params(self) -> int:
        """Parameters a token passes through (routed experts' share only)."""
        if not self.is_moe:
            return self.total_params
        routed = self.moe_layers * self.experts_per_token * 3 * self.hidden_size * self.expert_intermediate_size
        return self.total_params - self.expert_params + routed

    def context_error(self, seq_len: int) -> str | None:
        """Why ``seq_len`` tokens exceed what the model was trained for, or None."""
        if self.max_position_embeddings is None or seq_len <= self.max_position_embeddings:
            return None
        return (
            f"spec.dataset.maxSeqLength: {seq_len} is longer than {self.name or self.model_type} supports "
            f"({self.max_position_embeddings} tokens, max_position_embeddings); lower maxSeqLength to "
            f"{self.max_position_embeddings} or use a long-context variant of the model"
        )

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
            if model_type in MOE_FAMILIES:
                # routers that are Linear subclasses (PhiMoE's gate) are not adapter targets
                names = tuple(n for n in names if n in FAMILY_MODULES[model_type])
        else:
            names = FAMILY_MODULES.get(model_type, LLAMA_MODULES)
        layers = need("num_hidden_layers", "n_layer", "num_layers")
        moe: _MoeFields = {}
        unsupported = None
        family = MOE_FAMILIES.get(model_type)
        if family is not None:
            experts = int(config.get(family.experts_key) or 0)
            moe_layers = layers
            if family.sparse_step:
                step = int(config.get("decoder_sparse_step") or 1)
                dense_only = {int(x) for x in config.get("mlp_only_layers") or ()}
                moe_layers = sum(1 for i in range(layers) if i not in dense_only and experts > 0 and (i + 1) % step == 0)
            moe = {
                "num_experts": experts,
                "experts_per_token": int(config.get("num_experts_per_tok") or 0),
                "expert_intermediate_size": int(config.get(family.expert_size_key) or intermediate),
                "shared_expert_intermediate_size": int(config.get("shared_expert_intermediate_size") or 0) if family.shared else 0,
                "moe_layers": moe_layers,
            }
            if module_names is None and moe_layers < layers and not set(MLP_MODULES) <= set(names):
                names = (*names, *MLP_MODULES)  # dense-only layers (mlp_only_layers) keep a SwiGLU MLP
            if experts <= 0 or moe["experts_per_token"] <= 0:
                unsupported = f"config.json of {model_type} has no expert counts ({family.experts_key}, num_experts_per_tok)"
        elif model_type not in FAMILY_MODULES:
            marker = next((k for k in MOE_MARKER_KEYS if config.get(k)), None)
            kind = "a mixture-of-experts" if marker else "an"
            unsupported = (
                f"{kind} architecture the VRAM estimate does not model (model_type {model_type!r}"
                + (f", {marker} in config.json" if marker else "")
                + f"); supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        # transformers' PretrainedConfig defaults tie_word_embeddings to True; Llama-3 8B+ sets it false.
        tie = bool(config.get("tie_word_embeddings", outer.get("tie_word_embeddings", True)))
        mpe = config.get("max_position_embeddings")
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=layers,
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
            unsupported=unsupported,
            **moe,
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
            **self._moe_config(),
        }

    def _moe_config(self) -> dict[str, Any]:
        """The MoE keys under the family's own config.json names (from_hf_config reads them back)."""
        family = MOE_FAMILIES.get(self.model_type)
        if family is None or not self.is_moe:
            return {}
        out: dict[str, Any] = {family.experts_key: self.num_experts, "num_experts_per_tok": self.experts_per_token}
        if family.expert_size_key != "intermediate_size":
            out[family.expert_size_key] = self.expert_intermediate_size
        if family.shared:
            out["shared_expert_intermediate_size"] = self.shared_expert_intermediate_size
        if family.sparse_step:
            # which layers are dense is not kept; the last (num_layers - moe_layers) ones stand in for them
            out["decoder_sparse_step"] = 1
            out["mlp_only_layers"] = list(range(self.moe_layers, self.num_layers))
        return out

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
    def linear_params(self) -> int:
        """Parameters in decoder Linear layers: the ones quantization compresses."""
        return sum(a * b * n for m in self.module_names for a, b, n in self._instances(m))

    @property
    def linear_out_rows(self) -> int:
        """Output rows of all decoder Linear layers (int8 keeps one scale per row)."""
        return sum(b * n for m in self.module_names for _, b, n in self._instances(m))

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
        return self.linear_params + self.unquantized_params + self.expert_params

    @property
    def largest_linear(self) -> int:
        return max((a * b for m in self.module_names for a, b, _ in self._instances(m)), default=0)

    def lora_params(self, targets: Iterable[str], r: int, dora: bool = False) -> int:
        """Trainable parameters of LoRA (A: r×in, B: out×r; DoRA adds a magnitude per output).

        On a fused expert parameter PEFT's ParamWrapper gives every expert its own rank-r pair
        (lora_A in→r·E, lora_B r·E→out).
        """
        total = 0
        for name in targets:
            if name in EXPERT_PARAMETERS:
                fan_in, fan_out = self.expert_parameter_shape(name)
                total += r * self.num_experts * (fan_in + fan_out) * self.moe_layers
                continue
            for fan_in, fan_out, n in self._instances(name):
                total += (r * (fan_in + fan_out) + (fan_out if dora else 0)) * n
        return total

    def all_linear(self) -> list[str]:
        """What PEFT's all-linear selects: every Linear except the output layer."""
        return list(self.module_names)

    def target_names(self) -> tuple[str, ...]:
        """Every name targetModules may list: Linear modules, and the expert parameters of an MoE."""
        return self.module_names + (EXPERT_PARAMETERS if self.is_moe else ())
