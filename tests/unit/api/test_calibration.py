"""The VRAM estimate against published peak measurements (../shared/REFERENCES.md).

Tolerances, stated per kind of row:
- ``peak``: a measured peak on a transformers + PEFT + bitsandbytes stack (the closest published
  figures to ours). The computed peak (no safety margin) is within ``tolerance`` of it, and the
  total with the safety margin never under-predicts it.
- ``max_context``: Unsloth's "Hugging Face + FA2" column, the longest padded sequence that still
  fits a card: the peak is just under the card's capacity, so the computed peak is within 10% of
  the capacity and the total with margin is above it.
- ``lower_bound``: torchtune's own stack (torchao NF4, chunked loss, its checkpointing) uses
  less memory than ours (the PEFT side-by-side measured ≈20 GiB against < 8 GiB), so its figure
  is a floor: our peak is at least the figure and at most 1.5× it.
None of these is our own stack, so the estimate stays ``calibrated: false`` with its margin. The
older stacks materialised the full fp32 logits and called ``prepare_model_for_kbit_training``
(fp32 embeddings and head); the rows model exactly that, while the operator models TRL 1.16's
chunked LM head, which our trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from finetune_operator import catalog
from finetune_operator.arch import LLAMA_MODULES, Architecture
from finetune_operator.estimate import GiB, TrainingShape, estimate

LLAMA_8B = catalog.lookup("hf://meta-llama/Llama-3.1-8B")
LLAMA_7B = Architecture.from_hf_config({
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "intermediate_size": 11008, "vocab_size": 32000, "tie_word_embeddings": False,
})
TORCHTUNE_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # lora_attn_modules + apply_lora_to_mlp
MB = 10**6


@dataclass(frozen=True)
class Row:
    source: str
    arch: Architecture
    shape: TrainingShape
    measured_bytes: int
    kind: str  # peak | max_context | lower_bound | weights
    tolerance: float = 0.10


TABLE = [
    Row(
        "pytorch/torchtune README: Llama-3.1-8B QLoRA, RTX 4090, batch 2, packed to 2048 — 7.4 GiB",
        LLAMA_8B, TrainingShape(r=8, target_modules=TORCHTUNE_TARGETS, micro_batch=2, dropout=False),  # type: ignore[arg-type]
        int(7.4 * GiB), "lower_bound",
    ),
    Row(
        "pytorch/torchtune README: Llama-3.1-8B LoRA (bf16), RTX 4090, same — 16.2 GiB",
        LLAMA_8B, TrainingShape(bits=None, r=8, target_modules=TORCHTUNE_TARGETS, micro_batch=2, dropout=False),  # type: ignore[arg-type]
        int(16.2 * GiB), "lower_bound",
    ),
    Row(
        "PEFT examples side-by-side: Llama-3-8B-Instruct, torchtune's QLoRA config on PEFT + bitsandbytes 0.43.3, RTX 4090 — ≈20 GiB",
        LLAMA_8B, TrainingShape(r=8, target_modules=TORCHTUNE_TARGETS, micro_batch=2, dropout=False,  # type: ignore[arg-type]
                                logits="materialized", upcast_unquantized=True),
        20 * GiB, "peak",
    ),
    *[
        Row(
            f"unslothai/unsloth README (HF + FA2 column): Llama-3.1-8B QLoRA r=32 all linear, batch 1, padded to {tokens} tokens — fits {card}",
            LLAMA_8B, TrainingShape(r=32, target_modules=LLAMA_MODULES, seq_len=tokens, dropout=False,  # type: ignore[arg-type]
                                    attention="flash_attention_2", logits="materialized", upcast_unquantized=True),
            capacity, "max_context",
        )
        for tokens, card, capacity in (
            (2551, "16 GB (a T4's 15,360 MiB)", 15360 * 2**20),
            (12264, "40 GB (40,960 MiB)", 40960 * 2**20),
            (28454, "80 GB (an H100's 81,559 MiB)", 81559 * 2**20),
        )
    ],
    Row(
        "QLoRA paper (arXiv 2305.14314), LLaMA-7B 4-bit base model — 5,048 MB; setup not itemised, so 15%",
        LLAMA_7B, TrainingShape(upcast_unquantized=True), 5048 * MB, "weights", 0.15,
    ),
]


@pytest.mark.parametrize("row", TABLE, ids=[r.source.split(":")[0] + " " + r.kind + f" {i}" for i, r in enumerate(TABLE)])
def test_calibration_row(row: Row) -> None:
    est = estimate(row.arch, row.shape)
    ratio = est.peak_bytes / row.measured_bytes
    if row.kind == "lower_bound":
        assert 1.0 <= ratio <= 1.5, f"{row.source}: estimate {est.peak_bytes / GiB:.2f} GiB, ratio {ratio:.2f}"
    elif row.kind == "weights":
        weights = est.breakdown["linearWeights"] + est.breakdown["embeddingWeights"]
        assert abs(weights / row.measured_bytes - 1) <= row.tolerance, weights / row.measured_bytes
    else:
        assert abs(ratio - 1) <= row.tolerance, f"{row.source}: peak {est.peak_bytes / GiB:.2f} GiB, ratio {ratio:.3f}"
        assert est.total_bytes >= row.measured_bytes, "with the safety margin the estimate must not under-predict"


def test_uncalibrated_estimates_carry_the_margin() -> None:
    est = estimate(LLAMA_8B, TrainingShape())  # type: ignore[arg-type]
    assert est.calibrated is False
    assert est.safety_margin == Decimal("0.15")
    assert est.breakdown["safetyMargin"] == int(Decimal(est.peak_bytes) * est.safety_margin)
    assert est.total_bytes == sum(est.breakdown.values())


def test_terms_respond_to_settings() -> None:
    base = TrainingShape()
    arch = LLAMA_8B
    assert arch is not None
    e = estimate(arch, base)
    assert estimate(arch, TrainingShape(double_quant=False)).breakdown["linearWeights"] > e.breakdown["linearWeights"]
    assert estimate(arch, TrainingShape(bits=8)).breakdown["linearWeights"] > e.breakdown["linearWeights"]
    assert estimate(arch, TrainingShape(gradient_checkpointing=False)).breakdown["activations"] > 5 * e.breakdown["activations"]
    assert estimate(arch, TrainingShape(attention="eager")).breakdown["activations"] > e.breakdown["activations"]
    assert estimate(arch, TrainingShape(logits="materialized")).breakdown["logits"] > 10 * e.breakdown["logits"]
    assert estimate(arch, TrainingShape(r=64)).breakdown["adapter"] == 4 * e.breakdown["adapter"]
    assert estimate(arch, TrainingShape(micro_batch=4)).total_bytes > e.total_bytes
    # fp32 logits of batch 2 × 2048 × 128k vocabulary are ≈1.96 GiB (REFERENCES.md)
    assert 2 * 2048 * 128256 * 4 / GiB == pytest.approx(1.96, abs=0.01)
