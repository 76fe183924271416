"""Data parallel on one node: two CPU processes (gloo) under torchrun, as several GPUs would run."""

from __future__ import annotations

import json

from finetune_trainer.testing import chat_records


def test_two_process_data_parallel_run(harness, s3_model_uri):
    data_uri = harness.put_dataset("chat.jsonl", chat_records(60))
    config, cfg = harness.config("ddp", base_model_uri=s3_model_uri, dataset_uri=data_uri, max_steps=4)
    prefix = harness.prefix(cfg)
    # The real entry point starts the workers (one per GPU in a pod; forced to 2 CPU workers here).
    result = harness.run("ddp", "--config", config, timeout=400, FINETUNE_NPROC_PER_NODE="2")
    assert result.returncode == 0, result.stderr[-5000:]

    manifest = json.loads(harness.read(prefix + "adapter/manifest.json"))
    assert manifest["hyperparameters"]["worldSize"] == 2
    assert manifest["results"]["globalStep"] == 4
    assert manifest["checks"]["loraTensorsChanged"] == manifest["checks"]["loraTensors"] > 0
    assert manifest["checks"]["baseWeightsUnchanged"] is True
    # Each rank's RNG state is part of the checkpoint, so a resumed run continues both streams.
    marker = json.loads(harness.read(prefix + "checkpoints/checkpoint-4/_COMPLETE"))
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])
    # Only rank 0 wrote the adapter: one manifest, one termination message.
    assert harness.termination("ddp")["class"] == "Succeeded"
