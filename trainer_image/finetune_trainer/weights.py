"""What training did to the weights, told the same way on every CPU and GPU.

The manifest's `checks` prove that the frozen 4-bit base stayed frozen and that the LoRA
weights moved. Two things make a naive proof machine-dependent:

* On CPUs with AVX-512 BF16, bitsandbytes 0.50 repacks a `Linear4bit` weight *in place* into a
  CPU-specific layout the first time the layer runs in eval mode without gradients (the
  baseline evaluation): the 4-bit codes are reordered, the double-quantized scales (absmax)
  are dequantized and stored as bfloat16. The same weights then have other bytes. The same
  path also asserts for layers whose output size is not a multiple of 32.
* That repack is lossy for the scales, so dequantized values are not bit-identical either.

So the trainer keeps every 4-bit layer off that path (`keep_standard_4bit_layout`; the CPU
training itself never takes it), and the fingerprint is layout-independent anyway: the 4-bit
codes are compared exactly in the standard layout, the scales within one bfloat16 ulp.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("finetune_trainer.weights")

# How far a scale may move without the weight having changed. The CPU repack stores scales as
# bfloat16 (at most one ulp, 2^-7 of the value); its inverse (run when the layer's state dict is
# saved) re-quantizes them to 8 bits (double quantization), off by at most half the dynamic map's
# largest step (0.0141 / 2 < 2^-7) of the largest scale. The 4-bit codes themselves must match exactly.
SCALE_RTOL = 2.0**-7
SAMPLE = 8


@dataclass(frozen=True)
class FourBitFingerprint:
    """A 4-bit weight as its meaning: the codes (standard layout) and the per-block scales."""

    codes_sha256: str
    scales: Any  # torch.Tensor, float32, one per quantization block in standard block order

    def same_weight(self, other: FourBitFingerprint) -> bool:
        import torch

        if self.codes_sha256 != other.codes_sha256 or self.scales.shape != other.scales.shape:
            return False
        bound = SCALE_RTOL * self.scales.abs() + SCALE_RTOL * self.scales.abs().max()
        return bool(torch.all((self.scales - other.scales).abs() <= bound))


@dataclass
class Fingerprints:
    """A sample of frozen base weights and every LoRA weight, taken before and after training."""

    base: dict[str, FourBitFingerprint | float] = field(default_factory=dict)
    lora: dict[str, float] = field(default_factory=dict)


def keep_standard_4bit_layout(model: Any) -> int:
    """Turn off bitsandbytes' in-place AVX-512 BF16 repack on every 4-bit layer; returns how many.

    The repack only serves CPU inference speed; it changes the weights' bytes mid-run and asserts
    on output sizes that are not a multiple of 32, so a training run never wants it.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            if module.support_avx512bf16_for_cpu:
                count += 1
            module.support_avx512bf16_for_cpu = False
    if count:
        log.info("kept %d 4-bit layers in the standard layout (bitsandbytes' CPU repack is off)", count)
    return count


def keep_adapter_in_fp32(model: Any) -> int:
    """Put every trainable parameter back in fp32 after TRL's SFTTrainer cast them to bfloat16; returns how many.

    TRL 1.16 casts the adapter of a quantized model to bfloat16 (sft_trainer.py, "QLoRA ... bf16"),
    while PEFT's default, the memory estimate and docs/api.md keep it in fp32. Left as it is, an
    uninterrupted run trains the adapter in bfloat16 and a resumed one in fp32 (resuming loads the
    checkpoint through PEFT's load_adapter, which upcasts it): the two drift apart by several bfloat16
    ulps (issue 12). fp32 master weights also keep small updates that bfloat16 would round away, and
    GPUs without bfloat16 (fp16 compute) never see it. The compute dtype is unchanged: the LoRA
    matmuls run in it under autocast.
    """
    import torch

    count = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.to(torch.float32)
            count += 1
    if count:
        log.info("kept %d trainable adapter tensors in fp32 (TRL had cast them to bfloat16)", count)
    return count


def restore_standard_4bit_layout(model: Any) -> int:
    """Put every 4-bit layer that is in the CPU inference layout back into the standard one; returns how many.

    bitsandbytes routes a repacked layer to an inference-only kernel (no autograd): on an AVX-512
    BF16 CPU, training through such a layer passes no gradient to anything below it, so the LoRA
    weights there would silently never move. Training always runs on the standard layout. The
    library's own inverse restores the codes exactly and re-quantizes the scales (the fingerprint's
    tolerance, `SCALE_RTOL`). The repack is then turned off for the rest of the run (evaluations
    during training would repack again); `keep_standard_4bit_layout` keeps all this a no-op on real runs.
    """
    keep_standard_4bit_layout(model)
    count = 0
    for module in model.modules():
        weight: Any = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes import functional as F  # only a 4-bit model gets here

            weight.data, weight.quant_state = F._convert_weight_packed_for_cpu_inverse(weight.data, state)
            count += 1
    if count:
        log.warning("restored %d 4-bit layers from bitsandbytes' CPU inference layout before training", count)
    return count


def force_cpu_4bit_repack(model: Any) -> int:
    """Test hook: take the AVX-512 BF16 repack path on any CPU (what such CPUs do by default)."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
            count += 1
    log.warning("test hook: %d 4-bit layers will be repacked into the CPU layout on first eval", count)
    return count


def four_bit_fingerprint(data: Any, quant_state: Any) -> FourBitFingerprint:
    """Codes and scales of a bitsandbytes 4-bit weight, in the standard layout whichever it is in."""
    import torch
    from bitsandbytes import functional as F

    qs = quant_state
    codes = data
    if getattr(qs, "packing_format_for_cpu", False):
        # The library's own inverse (on copies: it rewrites the state it is given) restores the
        # standard code order exactly; the scales are read from the CPU layout directly, because
        # the inverse would re-quantize them (lossy a second time).
        codes, _ = F._convert_weight_packed_for_cpu_inverse(data.detach().clone(), copy.deepcopy(qs))
        scales = qs.absmax.detach().T.reshape(-1).float()
    elif qs.nested:
        scales = (F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset).float().reshape(-1)
    else:
        scales = qs.absmax.detach().float().reshape(-1)
    raw = codes.detach().contiguous().view(torch.uint8).reshape(-1).cpu().numpy().tobytes()
    return FourBitFingerprint(hashlib.sha256(raw).hexdigest(), scales.detach().cpu().clone())


def fingerprints(model: Any, sample: int = SAMPLE) -> Fingerprints:
    """Fingerprint a sample of frozen base weights and every LoRA weight."""
    import torch

    out = Fingerprints()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                t = p.detach().float()
                out.lora[name] = float(t.sum().item() + t.abs().sum().item())
            elif not p.requires_grad and len(out.base) < sample and p.ndim >= 1:
                quant_state = getattr(p, "quant_state", None)
                if quant_state is not None:
                    out.base[name] = four_bit_fingerprint(p.data, quant_state)
                else:
                    out.base[name] = float(p.detach().float().sum().item())
    return out


def _same(a: FourBitFingerprint | float | None, b: FourBitFingerprint | float | None) -> bool:
    if isinstance(a, FourBitFingerprint) and isinstance(b, FourBitFingerprint):
        return a.same_weight(b)
    return a == b


def weight_checks(model: Any, before: Fingerprints) -> dict[str, Any]:
    """What the manifest reports about the trained model: 4-bit layers, frozen base, changed LoRA."""
    after = fingerprints(model)
    linear4bit = 0
    try:
        import bitsandbytes as bnb

        linear4bit = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    except ImportError:
        pass
    changed = [n for n, v in after.lora.items() if before.lora.get(n) != v]
    unchanged = set(after.base) == set(before.base) and all(_same(before.base[n], v) for n, v in after.base.items())
    return {
        "linear4bitModules": linear4bit,
        "baseWeightsSampled": len(after.base),
        "baseWeightsUnchanged": unchanged,
        "loraTensors": len(after.lora),
        "loraTensorsChanged": len(changed),
    }
