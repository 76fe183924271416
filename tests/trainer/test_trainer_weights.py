"""The base-weight check means the same on every CPU: both of bitsandbytes' CPU paths, forced here.

CPUs with AVX-512 BF16 repack 4-bit weights into a CPU layout on their first eval forward; others
never do. `support_avx512bf16_for_cpu` is the layer's switch for that path, so these tests take
it (and keep off it) on whatever machine runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer.testing import chat_records
from finetune_trainer.weights import (
    fingerprints,
    force_cpu_4bit_repack,
    keep_standard_4bit_layout,
    restore_standard_4bit_layout,
    weight_checks,
)


def _load_4bit(path: str) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32,
                                                device_map={"": "cpu"})


def _linear4bit(model: Any) -> list[Any]:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _packed(model: Any) -> int:
    return sum(1 for m in _linear4bit(model) if getattr(m.weight.quant_state, "packing_format_for_cpu", False))


def _eval_forward(model: Any) -> Any:
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4, 5]])).logits


def test_repacked_and_restored_weights_count_as_unchanged(tiny_model: str) -> None:
    model = _load_4bit(tiny_model)
    before = fingerprints(model)
    assert force_cpu_4bit_repack(model) == 14
    _eval_forward(model)
    assert _packed(model) == 14  # the AVX-512 BF16 path was really taken: new bytes, same weights
    assert weight_checks(model, before)["baseWeightsUnchanged"] is True
    # Saving the state dict converts back to the standard layout (scales re-quantized): still the same.
    model.state_dict()
    assert _packed(model) == 0
    checks = weight_checks(model, before)
    assert checks["baseWeightsUnchanged"] is True and checks["baseWeightsSampled"] == 8


def test_training_never_runs_through_the_inference_layout(tiny_model: str) -> None:
    # A repacked layer runs an inference-only kernel: on an AVX-512 BF16 CPU nothing below it
    # would get a gradient. The trainer restores the standard layout before training.
    model = _load_4bit(tiny_model)
    before = fingerprints(model)
    force_cpu_4bit_repack(model)
    _eval_forward(model)
    assert _packed(model) == 14
    assert restore_standard_4bit_layout(model) == 14
    assert _packed(model) == 0
    _eval_forward(model)  # an evaluation later in the run does not repack again
    assert _packed(model) == 0 and restore_standard_4bit_layout(model) == 0
    assert weight_checks(model, before)["baseWeightsUnchanged"] is True
    model.train()
    for layer in _linear4bit(model):
        x = torch.randn(2, layer.in_features, requires_grad=True)
        layer(x).sum().backward()
        assert x.grad is not None and bool(x.grad.abs().sum() > 0), "no gradient through a restored 4-bit layer"


def test_a_changed_code_or_scale_is_seen_in_either_layout(tiny_model: str) -> None:
    model = _load_4bit(tiny_model)
    before = fingerprints(model)
    layer = _linear4bit(model)[0]
    layer.weight.data.view(torch.uint8).view(-1)[0] ^= 0x01  # one 4-bit code
    assert weight_checks(model, before)["baseWeightsUnchanged"] is False

    model = _load_4bit(tiny_model)
    before = fingerprints(model)
    force_cpu_4bit_repack(model)
    _eval_forward(model)
    state = _linear4bit(model)[0].weight.quant_state
    state.absmax[0] = state.absmax[0] * 1.25  # one scale, in the CPU layout
    assert weight_checks(model, before)["baseWeightsUnchanged"] is False


def test_the_trainer_keeps_layers_whose_size_is_not_a_multiple_of_32_working(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=40, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    LlamaForCausalLM(config).save_pretrained(tmp_path)

    model = _load_4bit(str(tmp_path))
    force_cpu_4bit_repack(model)
    with pytest.raises(AssertionError, match="divisible by block_n"):
        _eval_forward(model)  # what an AVX-512 BF16 CPU does by default to gate_proj (40 outputs)

    model = _load_4bit(str(tmp_path))
    force_cpu_4bit_repack(model)
    assert keep_standard_4bit_layout(model) == 7
    logits = _eval_forward(model)
    assert _packed(model) == 0 and torch.isfinite(logits).all()


def test_training_on_the_repack_path_reports_the_base_unchanged(harness: Any, s3_model_uri: str) -> None:
    data_uri = harness.put_dataset("chat.jsonl", chat_records(40))
    config, cfg = harness.config("repack", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=2)
    result = harness.run("repack", "--config", config, timeout=600,
                         FINETUNE_TRAINER_TEST_HOOKS=json.dumps({"force_cpu_4bit_repack": True}))
    assert result.returncode == 0, result.stderr[-5000:]
    assert "repacked into the CPU layout" in result.stderr
    manifest = json.loads(harness.read(harness.prefix(cfg) + "adapter/manifest.json"))
    checks = manifest["checks"]
    assert checks["baseWeightsUnchanged"] is True and checks["baseWeightsSampled"] > 0
    assert checks["loraTensorsChanged"] == checks["loraTensors"] > 0
