"""Peak GPU memory of one LoRA/QLoRA training process, term by term.

What must fit is the allocator's reserved peak plus the CUDA context and library workspaces.
Each term is computed separately (bytes per GPU; with several GPUs each holds a full replica):

linearWeights
    Frozen decoder Linear weights. NF4/FP4: 4 bits plus the block-wise constants, 0.5 bit/param with a
    block size of 64, ≈0.127 bit with double quantization (QLoRA, arXiv 2305.14314). int8: 1 byte
    plus one fp32 scale per output row. Unquantized (lora): the compute dtype.
expertWeights
    Mixture-of-experts models: every routed expert of every sparse layer is resident, whichever the
    router picks, plus the routers. With transformers 5.24 the experts are fused 3-D parameters
    (``mlp.experts.gate_up_proj``/``down_proj``), not Linear layers, so bitsandbytes' load_in_4bit
    leaves them unquantized: they are counted in the compute dtype even under QLoRA. 0 for dense models.
embeddingWeights
    Embeddings, the LM head (unless tied), norms and any vision tower: bitsandbytes leaves them in
    the compute dtype. ``upcast_unquantized`` models PEFT's ``prepare_model_for_kbit_training``,
    which casts them to fp32 (the QLoRA reference code calls it; TRL 1.16's SFTTrainer does not).
adapter
    LoRA A/B (+ DoRA magnitudes): PEFT keeps adapter weights in fp32 (``autocast_adapter_dtype``),
    and the trainer undoes TRL's cast of a quantized model's adapter to bf16 (``keep_adapter_in_fp32``),
    so weights 4 + gradients 4 + AdamW moments 8 = 16 bytes per trainable parameter.
activations
    Per token and layer, what autograd saves (compute-dtype bytes c): the two RMSNorms (fp32
    input and normalised copy plus the c-byte output, 2·(8+c)·h), attention (input, q/k/v after
    RoPE, output and its contiguous copy: c·(h + 3·q + 2·kv)), the SwiGLU MLP (input, gate, SiLU,
    up and product: c·(h + 4·I); in a sparse MoE layer k routed experts each see a copy of the token,
    k·c·(h + 4·I_e), plus the fp32 router logits and probabilities, 8·E, and a shared expert's
    c·(h + 4·I_s)), LoRA dropout copies and masks ((c+1)·in per target when dropout
    > 0) and DoRA's extra output per target. Eager attention adds the score and probability
    matrices (a·s per token, c + 4 + c bytes). This is Korthikanti et al. (arXiv 2205.05198)'s
    accounting redone for SwiGLU, GQA and frozen weights. With gradient checkpointing only each
    layer's input (c·h per token) is kept, plus one layer recomputed during backward together
    with its gradient buffers. LoRA on fused expert parameters (PEFT ``target_parameters``) adds the
    parametrized weight and its delta of each targeted parameter, 2·c·E·in·out, per layer in flight.
logits
    ``materialized``: what plain transformers does — bf16 logits, the fp32 upcast in
    ``ForCausalLMLoss``, log-softmax output and its gradient: b·s·V·(c + 12) bytes, often the
    largest term at a 128k vocabulary. ``chunked``: TRL ≥ 1.x SFTTrainer's fused LM head
    (trl/kernels/chunked_logprob.py) never builds the full logits: one [min(N, 4096) × min(V,
    32768)] tile in the compute dtype plus the gathered hidden states and their fp32 gradient.
    Our trainer uses TRL's SFTTrainer, so ``chunked`` is the default.
overhead
    CUDA context and cuBLAS/cuDNN workspaces (a fixed 768 MiB), the dequantized copy of the largest
    quantized weight that bitsandbytes materialises in backward (×2: weight and its transpose),
    and allocator slack of 5% on the activation-like terms.
safetyMargin
    ``SAFETY_MARGIN`` of the sum while ``CALIBRATED`` is false: the published figures we checked
    against (tests/unit/api/test_calibration.py) are other stacks' measurements, not ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from .arch import EXPERT_PARAMETERS, Architecture

GiB = 1024**3
MiB = 1024**2

CALIBRATED = False
SAFETY_MARGIN = Decimal("0.15")
"""Added on top while uncalibrated: the calibration table shows our terms within ≈10% of the
closest published stack, and 15% covers that spread plus allocator fragmentation we do not model."""

CONTEXT_BYTES = 768 * MiB
FRAGMENTATION = Decimal("0.05")
_CHUNK_TOKENS = 4096
_CHUNK_VOCAB = 32768

ComputeDtypeName = Literal["bf16", "fp16", "fp32"]
LogitsMode = Literal["chunked", "materialized"]
AttentionImpl = Literal["sdpa", "eager", "flash_attention_2"]
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

@dataclass(frozen=True)
class TrainingShape:
    """Everything besides the architecture that moves the peak."""

    bits: Literal[4, 8] | None = 4
    """4 (NF4/FP4), 8 (int8) or None (base in the compute dtype)."""
    double_quant: bool = True
    compute_dtype: ComputeDtypeName = "bf16"
    r: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dora: bool = False
    dropout: bool = True
    micro_batch: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    attention: AttentionImpl = "sdpa"
    logits: LogitsMode = "chunked"
    upcast_unquantized: bool = False


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per GPU, with the terms that make it up."""

    breakdown: dict[str, int]
    trainable_params: int
    total_params: int
    calibrated: bool = CALIBRATED
    safety_margin: Decimal = SAFETY_MARGIN
    shape: TrainingShape = field(default_factory=TrainingShape)

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def peak_bytes(self) -> int:
        """The computed peak without the safety margin."""
        return self.total_bytes - self.breakdown.get("safetyMargin", 0)

    @property
    def trainable_percent(self) -> Decimal:
        if not self.total_params:
            return Decimal(0)
        return (Decimal(self.trainable_params) * 100 / Decimal(self.total_params)).quantize(Decimal("0.0001"))

    def to_status(self) -> dict[str, object]:
        """The camelCase ``status.estimate`` fragment."""
        return {
            "totalBytes": self.total_bytes,
            "total": gib(self.total_bytes),
            "breakdown": dict(self.breakdown),
            "trainableParams": self.trainable_params,
            "totalParams": self.total_params,
            "trainablePercent": str(self.trainable_percent),
            "calibrated": self.calibrated,
            "safetyMargin": str(self.safety_margin),
        }


def gib(n: int) -> str:
    """Bytes as a short human-readable GiB string, e.g. "46.2Gi"."""
    return f"{n / GiB:.1f}Gi"


def estimate(arch: Architecture, shape: TrainingShape, *, safety_margin: Decimal | None = None) -> Estimate:
    """The peak GPU memory of training ``arch`` with ``shape``."""
    margin = SAFETY_MARGIN if safety_margin is None else safety_margin
    c = _DTYPE_BYTES[shape.compute_dtype]
    h, layers, vocab = arch.hidden_size, arch.num_layers, arch.vocab_size
    q_width = arch.num_heads * arch.head_dim
    kv_width = arch.num_kv_heads * arch.head_dim
    inter = arch.intermediate_size
    tokens = shape.micro_batch * shape.seq_len

    if shape.bits == 4:
        quantized = arch.linear_params * (4 + (0.127 if shape.double_quant else 0.5)) / 8
    elif shape.bits == 8:
        quantized = arch.linear_params + 4 * arch.linear_out_rows
    else:
        quantized = arch.linear_params * c
    unquantized = arch.unquantized_params * (4 if shape.upcast_unquantized and shape.bits else c)
    experts = arch.expert_params * c

    trainable = arch.lora_params(shape.target_modules, shape.r, shape.dora)
    adapter = 16 * trainable

    # per token, per layer
    norms = 2 * (8 + c) * h
    attention = c * (h + 3 * q_width + 2 * kv_width)
    mlp_dense = c * (h + 4 * inter)
    mlp = mlp_dense
    grad_width = h + inter
    sparse_layers = arch.moe_layers if arch.is_moe else 0
    if arch.is_moe:
        k, e_inter, s_inter = arch.experts_per_token, arch.expert_intermediate_size, arch.shared_expert_intermediate_size
        mlp = k * c * (h + 4 * e_inter) + 8 * arch.num_experts + (c * (h + 4 * s_inter) + 8 if s_inter else 0)
        grad_width = h + k * e_inter + s_inter
    expert_lora = 0
    lora = 0
    for name in shape.target_modules:
        if arch.is_moe and name in EXPERT_PARAMETERS:
            fan_in, fan_out = arch.expert_parameter_shape(name)
            expert_lora += 2 * c * arch.num_experts * fan_in * fan_out
            continue
        fan_in, fan_out = arch.linear_shape(name)
        lora += (c + 1) * fan_in if shape.dropout else 0
        lora += c * shape.r + (c * fan_out if shape.dora else 0)
    per_layer_token = norms + attention + mlp + lora
    dense_layer_token = norms + attention + mlp_dense + lora
    eager_per_layer = (
        shape.micro_batch * arch.num_heads * shape.seq_len**2 * (2 * c + 4) if shape.attention == "eager" else 0
    )
    if shape.gradient_checkpointing:
        recompute = tokens * (per_layer_token + c * 2 * grad_width) + eager_per_layer + expert_lora
        activations = layers * tokens * c * h + recompute
    else:
        moe_part = sparse_layers * (tokens * per_layer_token + expert_lora)
        dense_part = (layers - sparse_layers) * tokens * dense_layer_token
        activations = moe_part + dense_part + layers * eager_per_layer
    activations += tokens * (norms // 2 + c * h)  # final norm and the LM head's input

    if shape.logits == "materialized":
        logits = tokens * vocab * (c + 12)
    else:
        tile = min(tokens, _CHUNK_TOKENS) * min(vocab, _CHUNK_VOCAB) * c
        logits = tile + tokens * h * (c + 4) + tokens * 8 * 4

    dequant = 2 * arch.largest_linear * c if shape.bits else 0
    slack = int((activations + logits) * FRAGMENTATION)
    overhead = CONTEXT_BYTES + dequant + slack

    terms = {
        "linearWeights": int(quantized),
        "expertWeights": int(experts),
        "embeddingWeights": int(unquantized),
        "adapter": int(adapter),
        "activations": int(activations),
        "logits": int(logits),
        "overhead": int(overhead),
    }
    peak = sum(terms.values())
    terms["safetyMargin"] = int(Decimal(peak) * margin) if not CALIBRATED else 0
    return Estimate(
        breakdown=terms,
        trainable_params=trainable,
        total_params=arch.total_params,
        safety_margin=margin if not CALIBRATED else Decimal(0),
        shape=shape,
    )


def with_changes(shape: TrainingShape, **changes: Any) -> TrainingShape:
    """A copy of ``shape`` with some fields changed (for what-if suggestions)."""
    return replace(shape, **changes)
