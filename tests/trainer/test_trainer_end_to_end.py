"""Model and data in S3 → inspection report → QLoRA run → adapter and manifest in S3."""

from __future__ import annotations

import hashlib
import json

from safetensors.torch import load as load_safetensors

from finetune_trainer.testing import STOCK_CHATML, chat_records


def test_inspect_then_train_then_rerun(harness, s3_model_uri):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config(
        "e2e", base_model_uri=s3_model_uri, model_name_or_path=s3_model_uri, dataset_uri=data_uri,
        system_prompt="You are a terse calculator.",
    )
    prefix = harness.prefix(cfg)

    # Inspection: CPU only, config + tokenizer, report in S3, summary in the termination message.
    inspect = harness.run("inspect", "inspect", "--config", config)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    summary = harness.termination("inspect")
    assert summary["class"] == "Succeeded"
    arch = summary["architecture"]
    assert arch["model_type"] == "llama" and arch["num_hidden_layers"] == 2 and arch["hidden_size"] == 64
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(arch["module_names"])
    assert summary["data"]["examples"] == 60 and summary["data"]["validation"] == 6
    assert summary["data"]["tokens"]["max"] > 10
    report = json.loads(harness.read(prefix + "reports/inspection.json"))
    assert summary["reportUri"] == f"s3://runs/{prefix}reports/inspection.json"
    assert report["verdict"] == "usable" and report["chatTemplate"] == {"family": "chatml", "marked": True, "variant": "chatml", "tools": False}
    assert summary["lossMasking"] == report["lossMasking"] == {
        "mode": "assistant_only", "trainOnInputs": False, "chatTemplate": "chatml", "zeroWeightMessages": 0}
    # Inspection never downloads the weights.
    assert not any("model.safetensors" in k for k in harness.keys(prefix))

    train = harness.run("train", "--config", config)
    assert train.returncode == 0, train.stderr[-5000:]
    done = harness.termination("train")
    assert done["class"] == "Succeeded"
    # The operator fills the status from this report alone (docs/contract.md §3).
    assert done["adapter"]["uri"].endswith(prefix + "adapter/")
    assert done["adapter"]["manifestUri"].endswith(prefix + "adapter/manifest.json")
    assert done["adapter"]["sizeBytes"] > 0 and len(done["adapter"]["sha256"]) == 64

    keys = harness.keys(prefix)
    manifest = json.loads(harness.read(prefix + "adapter/manifest.json"))
    assert manifest["jobUid"] == cfg["job_uid"]
    assert manifest["lossMasking"] == "assistant_only" and done["lossMasking"]["mode"] == "assistant_only"
    assert manifest["lossMaskingDetails"]["trainOnInputs"] is False
    assert manifest["results"]["activationCheckpointing"] is True
    assert manifest["systemPrompt"] == "You are a terse calculator."
    assert manifest["baseModel"]["contentHash"]
    assert manifest["dataset"]["sha256"] == hashlib.sha256(
        harness.client.get_object(Bucket="datasets", Key=data_uri.split("/", 3)[3])["Body"].read()
    ).hexdigest()
    assert (manifest["dataset"]["train"], manifest["dataset"]["validation"]) == (54, 6)
    results = manifest["results"]
    assert results["baselineEvalLoss"] > 0 and results["finalEvalLoss"] > 0 and results["trainLoss"] > 0
    assert results["finalEvalLoss"] < results["baselineEvalLoss"]
    assert results["globalStep"] == 4 and results["tokens"] > 0
    assert manifest["peakGpuMemory"]["maxMemoryReservedBytes"] is None  # CPU run
    assert manifest["libraries"]["trl"].startswith("1.16")
    assert manifest["hyperparameters"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert manifest["hyperparameters"]["quantization"]["bnb_4bit_use_double_quant"] is True

    # 4-bit layers really loaded and trained: the base stayed frozen, every LoRA tensor moved.
    checks = manifest["checks"]
    assert checks["linear4bitModules"] == 14  # 7 Linear layers × 2 decoder layers
    assert checks["baseWeightsUnchanged"] is True and checks["baseWeightsSampled"] > 0
    assert checks["loraTensors"] == 8 and checks["loraTensorsChanged"] == 8

    # Every file in the manifest is in S3 with that hash; the adapter holds only LoRA weights.
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"):
        assert name in manifest["files"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(harness.read(prefix + "adapter/" + name)).hexdigest() == digest
    tensors = load_safetensors(harness.read(prefix + "adapter/adapter_model.safetensors"))
    assert tensors and all("lora_" in k for k in tensors)
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # B starts at zero
    # Serving gets the model's own template (the marked one trained on the same text).
    assert harness.read(prefix + "adapter/chat_template.jinja").decode() == STOCK_CHATML
    # Checkpoints: complete ones only, at most keep_checkpoints.
    markers = [k for k in keys if k.endswith("/_COMPLETE")]
    assert markers == [prefix + "checkpoints/checkpoint-2/_COMPLETE", prefix + "checkpoints/checkpoint-4/_COMPLETE"]

    # A rerun finds the complete manifest and leaves the adapter alone.
    before = harness.read(prefix + "adapter/manifest.json")
    rerun = harness.run("rerun", "--config", config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert harness.termination("rerun")["message"] == "adapter already complete"
    assert harness.read(prefix + "adapter/manifest.json") == before
